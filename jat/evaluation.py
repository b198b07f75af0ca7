"""A potential against labelled structures: errors, per-species errors, and for committees how
well σ tells the errors (NLL, rank correlation, coverage, miscalibration), plus calibration.

:func:`evaluate` runs a potential over structures (batched, in the potential's own compiled
call) and keeps predictions and labels side by side as float64 arrays; :func:`error_metrics`
turns them into figures, :func:`fit_calibration` into a :class:`jat.uncertainty.Calibration`.
Units: eV, eV/atom, eV/Å, eV/Å³; σ as standard deviations in the same units.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jat.data.structure import Structure
from jat.properties import DEBYE_PER_EA
from jat.uncertainty import (
    CALIBRATION_METHODS,
    Calibration,
    calibration_factor,
    coverage,
    gaussian_nll,
    miscalibration_area,
)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Predictions next to labels (NaN where a structure has no label), float64.

    Per structure (M): ``energy``, ``energy_ref``, ``energy_std`` (eV), ``n_atoms``,
    ``stress``/``stress_ref``/``stress_std`` (M, 3, 3) eV/Å³ (NaN for non-periodic ones),
    ``sources``. Per atom (A = all atoms): ``forces``, ``forces_ref``, ``forces_std`` (A, 3)
    eV/Å, ``symbols`` (A,), ``structure`` (A,) the index of the atom's structure. The σ arrays
    are None for a single potential; ``energy_z`` (M,) and ``forces_z`` (A,) the z-scores
    against the training labels, None when the potential has no label statistics.
    ``properties`` and ``properties_ref``: per property target of the potential, predictions
    and labels (M,), or (A,) for an atomic target (|μ| in e·Å for a dipole);
    ``property_kinds``: each target's kind.
    """

    energy: np.ndarray
    energy_ref: np.ndarray
    n_atoms: np.ndarray
    forces: np.ndarray
    forces_ref: np.ndarray
    symbols: np.ndarray
    structure: np.ndarray
    stress: np.ndarray
    stress_ref: np.ndarray
    sources: tuple[str, ...]
    energy_std: np.ndarray | None = None
    forces_std: np.ndarray | None = None
    stress_std: np.ndarray | None = None
    energy_z: np.ndarray | None = None
    forces_z: np.ndarray | None = None
    properties: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    properties_ref: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    property_kinds: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def committee(self) -> bool:
        return self.forces_std is not None


def evaluate(
    potential: Any,
    structures: Iterable[Structure],
    *,
    batch_size: int = 16,
    calibrated: bool = True,
) -> Evaluation:
    """Predictions of ``potential`` (a :class:`jat.Potential`) on ``structures``, in batches of
    ``batch_size`` structures sharing their periodicity (``Potential.compute_batch``).

    ``calibrated=False`` keeps a committee's raw σ (for fitting a calibration).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    structures = list(structures)
    if not structures:
        raise ValueError("no structures to evaluate")
    results: list[Any] = [None] * len(structures)
    groups: dict[tuple[bool, ...], list[int]] = {}
    for k, s in enumerate(structures):
        groups.setdefault(tuple(bool(p) for p in s.pbc), []).append(k)
    for pbc, members in groups.items():
        members = sorted(members, key=lambda k: structures[k].n_atoms)  # similar sizes together
        for start in range(0, len(members), batch_size):
            rows = members[start : start + batch_size]
            atoms = [structures[k].to_atoms() for k in rows]
            try:
                out = potential.compute_batch(
                    atoms, stress=all(pbc), calibrated=calibrated
                )
            except ValueError:
                _raise_for_the_culprit(potential, structures, rows)
                raise
            for k, r in zip(rows, out, strict=True):
                results[k] = r
    targets = tuple(getattr(potential, "properties", ()))
    return _collect(structures, results, bool(getattr(potential, "members", None)), targets)


def _raise_for_the_culprit(potential: Any, structures: Sequence[Structure], rows) -> None:
    """Evaluate a failed batch's structures one by one; the first that fails raises a
    ValueError naming its source (file and entry)."""
    for k in rows:
        try:
            potential.compute(structures[k].to_atoms(), forces=False, stress=False)
        except ValueError as err:
            raise ValueError(f"{structures[k].source or f'structure {k}'}: {err}") from None


def _collect(
    structures: Sequence[Structure], results: Sequence[Any], committee: bool, targets=()
):
    nan33 = np.full((3, 3), np.nan)

    def label(x, shape):
        return np.full(shape, np.nan) if x is None else np.asarray(x, np.float64)

    out = {
        "energy": np.array([r.energy for r in results]),
        "energy_ref": np.array([np.nan if s.energy is None else s.energy for s in structures]),
        "n_atoms": np.array([s.n_atoms for s in structures]),
        "forces": np.concatenate([r.forces.reshape(-1, 3) for r in results]),
        "forces_ref": np.concatenate(
            [label(s.forces, (s.n_atoms, 3)).reshape(-1, 3) for s in structures]
        ),
        "symbols": np.concatenate([np.asarray(s.symbols, dtype=object) for s in structures]),
        "structure": np.concatenate(
            [np.full(s.n_atoms, k) for k, s in enumerate(structures)]
        ),
        "stress": np.stack([nan33 if r.stress is None else r.stress for r in results]),
        "stress_ref": np.stack([label(s.stress, (3, 3)) for s in structures]),
        "sources": tuple(s.source for s in structures),
    }
    if targets:
        out["properties"], out["properties_ref"] = _property_columns(structures, results, targets)
        out["property_kinds"] = {t.key: t.kind for t in targets}
    if all(r.energy_z is not None for r in results):
        out["energy_z"] = np.array([r.energy_z for r in results])
    if all(r.forces_z is not None for r in results):
        out["forces_z"] = np.concatenate([np.asarray(r.forces_z) for r in results])
    if committee:
        out["energy_std"] = np.array([r.energy_std for r in results])
        out["forces_std"] = np.concatenate([r.forces_std.reshape(-1, 3) for r in results])
        out["stress_std"] = np.stack(
            [nan33 if r.stress_std is None else r.stress_std for r in results]
        )
    return Evaluation(**out)


def _property_columns(structures, results, targets):
    """Predictions and labels of every property target, NaN where a label is missing."""
    pred, ref = {}, {}
    for t in targets:
        if t.kind == "atomic":
            pred[t.key] = np.concatenate([np.asarray(r.properties[t.key]) for r in results])
            ref[t.key] = np.concatenate([
                np.asarray(s.properties[t.key], np.float64).reshape(-1)
                if t.key in s.properties else np.full(s.n_atoms, np.nan) for s in structures
            ])
        else:
            pred[t.key] = np.array([float(r.properties[t.key]) for r in results])
            ref[t.key] = np.array([float(s.properties.get(t.key, np.nan)) for s in structures])
    return pred, ref


# ---------------------------------------------------------------------------------------------
# figures


def _mae_rmse(errors: np.ndarray) -> dict[str, float]:
    e = errors[np.isfinite(errors)]
    if e.size == 0:
        return {}
    return {"mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e**2))),
            "n": int(e.size)}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two finite samples (NaN with fewer than 3 pairs)."""
    from scipy.stats import spearmanr

    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return float("nan")
    return float(spearmanr(x[keep], y[keep]).statistic)


def per_structure_force_errors(ev: Evaluation) -> tuple[np.ndarray, np.ndarray | None]:
    """(M,) mean per-atom force error ‖ΔF_i‖ of each structure and (committees) its mean per-atom
    force σ ‖σ_F,i‖, eV/Å (NaN where a structure has no force labels)."""
    m = len(ev.energy)
    norm = np.linalg.norm(ev.forces - ev.forces_ref, axis=1)
    count = np.bincount(ev.structure, np.isfinite(norm), m)
    total = np.bincount(ev.structure, np.where(np.isfinite(norm), norm, 0.0), m)
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.where(count > 0, total / count, np.nan)
        if ev.forces_std is None:
            return error, None
        sigma = np.bincount(ev.structure, np.linalg.norm(ev.forces_std, axis=1), m) / np.maximum(
            ev.n_atoms, 1
        )
    return error, np.where(count > 0, sigma, np.nan)


def _uncertainty_figures(errors: np.ndarray, stds: np.ndarray) -> dict[str, float]:
    keep = np.isfinite(errors) & np.isfinite(stds)
    e, s = errors[keep], stds[keep]
    if e.size == 0:
        return {}
    return {
        "nll": gaussian_nll(e, s),
        "spearman_abs_error_vs_std": spearman(np.abs(e), s),
        "coverage_1std": coverage(e, s, 1.0),
        "coverage_2std": coverage(e, s, 2.0),
        "miscalibration_area": miscalibration_area(e, s),
        "mean_std": float(np.mean(s)),
    }


def error_metrics(ev: Evaluation) -> dict[str, Any]:
    """MAE/RMSE of energy (per structure, eV, and per atom, eV/atom), forces (components, eV/Å;
    also per species), stress (components, eV/Å³) and every property target (``properties``:
    key → figures in its unit; a dipole's |μ| in e·Å and, ``mae_debye``, in Debye); for
    committees also the uncertainty figures: NLL, Spearman correlation of |error| with σ,
    1σ/2σ coverage, miscalibration area;
    with label statistics, how well the z-scores rank the errors (``z_score``)."""
    de = ev.energy - ev.energy_ref
    df = ev.forces - ev.forces_ref
    out: dict[str, Any] = {
        "structures": len(ev.energy),
        "atoms": int(ev.n_atoms.sum()),
        "energy": _mae_rmse(de),
        "energy_per_atom": _mae_rmse(de / ev.n_atoms),
        "forces": _mae_rmse(df),
        "forces_per_species": {
            str(sym): _mae_rmse(df[ev.symbols == sym]) for sym in sorted(set(ev.symbols))
        },
        "stress": _mae_rmse(ev.stress - ev.stress_ref),
    }
    out = {k: v for k, v in out.items() if v != {}}
    props = {}
    for key, kind in ev.property_kinds.items():
        fig = _mae_rmse(ev.properties[key] - ev.properties_ref[key])
        if fig and kind == "dipole":
            fig["mae_debye"] = fig["mae"] * DEBYE_PER_EA
            fig["rmse_debye"] = fig["rmse"] * DEBYE_PER_EA
        if fig:
            props[key] = fig
    if props:
        out["properties"] = props
    z = _z_score_figures(ev, de, df)
    if z:
        out["z_score"] = z
    if not ev.committee:
        return out
    unc: dict[str, Any] = {
        "energy": _uncertainty_figures(de, ev.energy_std),
        "forces": _uncertainty_figures(df.ravel(), ev.forces_std.ravel()),
        "stress": _uncertainty_figures((ev.stress - ev.stress_ref).ravel(),
                                       ev.stress_std.ravel()),
    }
    atom_error = np.linalg.norm(df, axis=1)
    atom_std = np.linalg.norm(ev.forces_std, axis=1)
    if unc["forces"]:
        unc["forces"]["spearman_per_atom"] = spearman(atom_error, atom_std)
        err_s, std_s = per_structure_force_errors(ev)
        unc["forces"]["spearman_per_structure"] = spearman(err_s, std_s)
    out["uncertainty"] = {k: v for k, v in unc.items() if v}
    return out


def _z_score_figures(ev: Evaluation, de: np.ndarray, df: np.ndarray) -> dict[str, float]:
    """How well |z| ranks the errors: Spearman of |energy error| with |z_E| per structure,
    of ‖ΔF_i‖ with |z_F,i| per atom, and of the structures' mean ‖ΔF_i‖ with their mean |z_F|."""
    out: dict[str, float] = {}
    if ev.energy_z is not None:
        out["spearman_energy"] = spearman(np.abs(de), np.abs(ev.energy_z))
    if ev.forces_z is not None:
        atom_error = np.linalg.norm(df, axis=1)
        out["spearman_forces_per_atom"] = spearman(atom_error, np.abs(ev.forces_z))
        err_s, _ = per_structure_force_errors(ev)
        m = len(ev.energy)
        z_s = np.bincount(ev.structure, np.abs(ev.forces_z), m) / np.maximum(ev.n_atoms, 1)
        out["spearman_forces_per_structure"] = spearman(err_s, z_s)
    return {k: v for k, v in out.items() if np.isfinite(v)}


def fit_calibration(ev: Evaluation, fitted_on: str = "", method: str = "nll") -> Calibration:
    """Calibration factors from a committee's raw σ (``evaluate(..., calibrated=False)``) on
    held-out data, by ``method`` (:data:`jat.uncertainty.CALIBRATION_METHODS`: "nll" the
    closed-form Gaussian NLL minimum, "coverage" ±1σ holding 68.27 % of the errors); a quantity
    without labels keeps 1."""
    if not ev.committee:
        raise ValueError("calibration needs a committee's σ (a potential with members >= 2)")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")

    def factor(errors, stds):
        try:
            return calibration_factor(errors, stds, method)
        except ValueError:  # no labels of this quantity
            return 1.0

    return Calibration(
        energy=factor(ev.energy - ev.energy_ref, ev.energy_std),
        forces=factor(ev.forces - ev.forces_ref, ev.forces_std),
        stress=factor(ev.stress - ev.stress_ref, ev.stress_std),
        method=method,
        fitted_on=fitted_on,
    )


def cross_fitted_coverage(ev: Evaluation, method: str = "nll", folds: int = 2) -> dict[str, float]:
    """An honest estimate of the calibrated force σ's coverage: the structures are dealt into
    ``folds`` groups (structure k into group k mod folds); each group's force components are
    scored with the factor fitted on the other groups. Returns the 1σ and 2σ coverage over all
    components and the spread of the fitted factors (``factor_min``, ``factor_max``)."""
    if not ev.committee:
        raise ValueError("calibration needs a committee's σ (a potential with members >= 2)")
    m = len(ev.energy)
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= m:
        raise ValueError(f"folds must be an integer in [2, {m}] (the structures), got {folds!r}")
    errors = ev.forces - ev.forces_ref
    group = ev.structure % folds
    scaled, factors = np.empty_like(errors), []
    for k in range(folds):
        fit = group != k
        factors.append(calibration_factor(errors[fit], ev.forces_std[fit], method))
        scaled[~fit] = factors[-1] * ev.forces_std[~fit]
    keep = np.isfinite(errors) & np.isfinite(scaled)
    return {
        "folds": folds,
        "coverage_1std": coverage(errors[keep], scaled[keep], 1.0),
        "coverage_2std": coverage(errors[keep], scaled[keep], 2.0),
        "factor_min": float(min(factors)),
        "factor_max": float(max(factors)),
    }


# ---------------------------------------------------------------------------------------------
# per-atom explanation


def explain(potential: Any, atoms: Any) -> Any:
    """A copy of ``atoms`` (ASE) with per-atom arrays for ASE's GUI or OVITO to colour, from one
    evaluation: ``energies`` E_i (eV, the atomic contributions), ``sensitivity`` ‖∂E/∂r_i‖
    (eV/Å, how strongly the energy depends on where atom i is), and for committees
    ``energies_std`` (eV) and ``force_std`` ‖σ_F,i‖ (eV/Å). Write it with
    ``ase.io.write("out.extxyz", atoms)``."""
    r = potential.compute(atoms, stress=False)
    out = atoms.copy()
    out.calc = None
    out.arrays["energies"] = np.asarray(r.energies, np.float64)
    out.arrays["sensitivity"] = np.linalg.norm(r.forces, axis=1)
    if r.forces_std is not None:
        out.arrays["energies_std"] = np.asarray(r.energies_std, np.float64)
        out.arrays["force_std"] = np.linalg.norm(r.forces_std, axis=1)
    out.info["energy"] = r.energy
    if r.energy_std is not None:
        out.info["energy_std"] = r.energy_std
    return out


# ---------------------------------------------------------------------------------------------
# plots


def write_plots(ev: Evaluation, directory: str | os.PathLike, title: str = "") -> list[str]:
    """Parity plots (energy per atom, force components) and, for committees, error against σ
    (per atom and per structure) as PNG files in ``directory``; returns the paths written
    (none without matplotlib)."""
    from jat.plotting import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return []
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    pairs = [
        (ev.energy_ref / ev.n_atoms, ev.energy / ev.n_atoms, "energy (eV/atom)"),
        (ev.forces_ref.ravel(), ev.forces.ravel(), "force component (eV/Å)"),
    ]
    for ax, (ref, pred, label) in zip(axes, pairs, strict=True):
        keep = np.isfinite(ref)
        if keep.any():
            lo, hi = float(np.min(ref[keep])), float(np.max(ref[keep]))
            ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
            ax.scatter(ref[keep], pred[keep], s=4, alpha=0.5)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
    fig.suptitle(title or "parity")
    written.append(save_figure(fig, directory / "parity.png"))
    if ev.committee:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
        atom_error = np.linalg.norm(ev.forces - ev.forces_ref, axis=1)
        atom_std = np.linalg.norm(ev.forces_std, axis=1)
        err_s, std_s = per_structure_force_errors(ev)
        for ax, (std, err, what) in zip(
            axes, [(atom_std, atom_error, "per atom"), (std_s, err_s, "per structure")],
            strict=True,
        ):
            keep = np.isfinite(err) & np.isfinite(std) & (std > 0) & (err > 0)
            if keep.any():
                lo = float(min(std[keep].min(), err[keep].min()))
                hi = float(max(std[keep].max(), err[keep].max()))
                ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
                ax.scatter(std[keep], err[keep], s=4, alpha=0.5)
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel(f"force σ {what} (eV/Å)")
            ax.set_ylabel(f"force error {what} (eV/Å)")
        fig.suptitle(title or "error against σ")
        written.append(save_figure(fig, directory / "error_vs_std.png"))
    return written


__all__ = [
    "Evaluation",
    "cross_fitted_coverage",
    "error_metrics",
    "evaluate",
    "explain",
    "fit_calibration",
    "per_structure_force_errors",
    "spearman",
    "write_plots",
]
