"""Uncertainty of a committee of potentials: the members' spread, its calibration, and a guard.

A committee is K parameter sets of one model evaluated on one graph
(:func:`jat.predictor.predict_committee`). For every quantity x (energy, per-atom energies,
forces, stress) its prediction is the members' mean and its uncertainty their standard deviation

    x̄ = (1/K) Σ_k x_k,   σ_x = sqrt((1/K) Σ_k (x_k − x̄)²),

always a standard deviation (same unit as x), never a variance. A committee's spread is not by
itself a calibrated error estimate; :class:`Calibration` holds one factor per quantity, fitted on
held-out data by minimising the Gaussian negative log-likelihood of the errors e given s·σ:

    NLL(s) = (1/M) Σ_m [ log(s σ_m) + e_m² / (2 s² σ_m²) ] + const,   ŝ² = (1/M) Σ_m e_m² / σ_m²

(closed form). Calibrated σ = ŝ · σ; the raw σ stays available (``calibrated=False``).

A second, model-free measure: z-scores of a prediction against the training labels'
distribution (:class:`LabelStatistics`, gathered in one pass with :class:`Welford`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

QUANTITIES = ("energy", "forces", "stress")
MIN_STD = 1e-12  # σ below this (members agree to round-off) is left out of a calibration fit
#: how a calibration factor is fitted: "nll" the closed-form Gaussian NLL minimum
#: (:func:`nll_factor`); "coverage" the factor that puts 68.27 % of the errors within ±1σ
#: (:func:`coverage_factor`), for errors with heavier tails than a Gaussian
CALIBRATION_METHODS = ("nll", "coverage")
ONE_SIGMA = 0.6826894921370859  # a Gaussian's mass within ±1σ


def spread(values: Any, xp: Any = np) -> tuple[Any, Any]:
    """(mean, standard deviation) over the leading member axis of ``values`` (K, ...).

    ``xp`` is the array module: numpy on the host (float64), ``jax.numpy`` inside jit.
    """
    mean = xp.mean(values, axis=0)
    std = xp.sqrt(xp.mean((values - mean) ** 2, axis=0))
    return mean, std


def atom_force_std(forces_std: Any, xp: Any = np) -> Any:
    """Per-atom force uncertainty ‖σ_F,i‖ = sqrt(Σ_c σ_F,ic²) (N,) eV/Å from (N, 3) σ."""
    return xp.sqrt(xp.sum(forces_std**2, axis=-1))


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Factors s multiplying the committee's σ of each quantity (1 = uncalibrated).

    ``method`` says how they were obtained on the data named in ``fitted_on``: one of
    :data:`CALIBRATION_METHODS`, or "none" (not calibrated).
    """

    energy: float = 1.0
    forces: float = 1.0
    stress: float = 1.0
    method: str = "none"
    fitted_on: str = ""

    def __post_init__(self):
        for name in QUANTITIES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise ValueError(f"calibration factor {name!r} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"calibration factor {name!r} must be positive and finite, got {value!r}"
                )
        if self.method not in ("none", *CALIBRATION_METHODS):
            raise ValueError(
                f"calibration method must be one of {('none', *CALIBRATION_METHODS)}, "
                f"got {self.method!r}"
            )

    def factor(self, quantity: str) -> float:
        return float(getattr(self, quantity))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """From :meth:`to_dict`'s mapping; unknown keys or bad values raise ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"calibration must be an object, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown calibration entries {unknown}; expected {sorted(fields)}")
        for key in ("method", "fitted_on"):
            if key in data and not isinstance(data[key], str):
                raise ValueError(f"calibration {key!r} must be a string, got {data[key]!r}")
        return cls(**dict(data))


def _ratios(errors: Any, stds: Any) -> np.ndarray:
    """e/σ over the entries with finite values and σ > :data:`MIN_STD`."""
    e = np.asarray(errors, np.float64).ravel()
    s = np.asarray(stds, np.float64).ravel()
    if e.shape != s.shape:
        raise ValueError(f"errors {e.shape} and stds {s.shape} differ in shape")
    keep = np.isfinite(e) & np.isfinite(s) & (s > MIN_STD)
    if not keep.any():
        raise ValueError("no finite error with a positive σ to calibrate on")
    return e[keep] / s[keep]


def nll_factor(errors: Any, stds: Any) -> float:
    """The factor ŝ minimising the Gaussian NLL of ``errors`` given ŝ·``stds`` (same shapes,
    any unit): ŝ = sqrt(mean(e²/σ²)) over the entries with σ > :data:`MIN_STD`."""
    return float(np.sqrt(np.mean(_ratios(errors, stds) ** 2)))


def coverage_factor(errors: Any, stds: Any, level: float = ONE_SIGMA) -> float:
    """The factor ŝ for which a fraction ``level`` of ``errors`` lies within ±ŝ·``stds``: the
    ``level`` quantile of |e|/σ. Unlike :func:`nll_factor` a few large outliers do not widen
    every σ, so ±1σ covers 68 % even when the errors have heavy tails."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"coverage level must lie in (0, 1), got {level!r}")
    return float(np.quantile(np.abs(_ratios(errors, stds)), level))


def calibration_factor(errors: Any, stds: Any, method: str) -> float:
    """ŝ by ``method``, one of :data:`CALIBRATION_METHODS`."""
    if method == "nll":
        return nll_factor(errors, stds)
    if method == "coverage":
        return coverage_factor(errors, stds)
    raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")


def gaussian_nll(errors: Any, stds: Any) -> float:
    """Mean Gaussian negative log-likelihood of ``errors`` given ``stds`` (σ > 0), in nats,
    including the constant ½ log 2π."""
    e = np.asarray(errors, np.float64).ravel()
    s = np.maximum(np.asarray(stds, np.float64).ravel(), MIN_STD)
    return float(np.mean(np.log(s) + 0.5 * (e / s) ** 2 + 0.5 * math.log(2 * math.pi)))


def coverage(errors: Any, stds: Any, k: float = 1.0) -> float:
    """Fraction of ``errors`` within ±k σ (a Gaussian gives 0.683 for k=1, 0.954 for k=2)."""
    e = np.abs(np.asarray(errors, np.float64).ravel())
    s = np.asarray(stds, np.float64).ravel()
    return float(np.mean(e <= k * s))


def miscalibration_area(errors: Any, stds: Any, levels: int = 100) -> float:
    """Area between the observed and the expected fraction of errors inside the central
    Gaussian interval of probability p, over p in (0, 1) (0 = perfectly calibrated, ≤ 0.5)."""
    from scipy.special import erfinv

    z = np.abs(np.asarray(errors, np.float64).ravel()) / np.maximum(
        np.asarray(stds, np.float64).ravel(), MIN_STD
    )
    p = (np.arange(levels) + 0.5) / levels
    observed = np.mean(z[None, :] <= (math.sqrt(2) * erfinv(p))[:, None], axis=1)
    return float(np.mean(np.abs(observed - p)))


@dataclasses.dataclass
class Welford:
    """Running mean and standard deviation (Welford/Chan), updated with batches of values, so a
    data set streamed once (e.g. the first epoch) gives them without holding it."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: Any) -> Welford:
        x = np.asarray(values, np.float64).ravel()
        x = x[np.isfinite(x)]
        if x.size == 0:
            return self
        n, mean = x.size, float(np.mean(x))
        m2 = float(np.sum((x - mean) ** 2))
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.count * n / total
        self.count = total
        return self

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else float("nan")


@dataclasses.dataclass(frozen=True)
class LabelStatistics:
    """Mean and standard deviation of the training labels, for z-scores of predictions.

    ``energy``: the energy per atom less the composition reference, (E − Σ μ_Z)/N (eV/atom);
    ``force``: the per-atom force magnitude ‖F_i‖ (eV/Å). A prediction's z = (x̂ − μ)/σ says
    how far it lies outside what training saw (|z| of a few: outside the training range).
    """

    energy_mean: float
    energy_std: float
    force_mean: float
    force_std: float
    structures: int = 0
    atoms: int = 0

    def __post_init__(self):
        for name in ("energy_mean", "energy_std", "force_mean", "force_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise ValueError(f"label statistic {name!r} must be a number, got {value!r}")
            if not math.isfinite(value) and not math.isnan(value):
                raise ValueError(f"label statistic {name!r} must be finite or NaN, got {value}")
        for name in ("structures", "atoms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"label statistic {name!r} must be a count, got {value!r}")

    def energy_z(self, residual_per_atom: Any) -> Any:
        return (np.asarray(residual_per_atom) - self.energy_mean) / _positive(self.energy_std)

    def force_z(self, forces: Any) -> Any:
        """z of each atom's force magnitude, (N,) from forces (N, 3)."""
        norm = np.linalg.norm(np.asarray(forces, np.float64), axis=-1)
        return (norm - self.force_mean) / _positive(self.force_std)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelStatistics:
        if not isinstance(data, Mapping):
            raise ValueError(f"label statistics must be an object, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - fields), sorted(
            {"energy_mean", "energy_std", "force_mean", "force_std"} - set(data)
        )
        if unknown or missing:
            raise ValueError(f"label statistics: unknown entries {unknown}, missing {missing}")
        return cls(**{k: (float("nan") if v is None else v) for k, v in data.items()})


def _positive(std: float) -> float:
    return std if std > 0 else float("nan")


def label_statistics(structures: Any, energy_shift: Any, species: Any) -> LabelStatistics:
    """:class:`LabelStatistics` of labelled structures (an iterable, read once), with the
    composition reference ``energy_shift`` (S,) eV for the species (element symbols)."""
    lookup = {s: k for k, s in enumerate(species)}
    shift = np.asarray(energy_shift, np.float64)
    energy, force = Welford(), Welford()
    structures_seen = atoms_seen = 0
    for s in structures:
        structures_seen += 1
        atoms_seen += s.n_atoms
        if s.energy is not None and s.n_atoms:
            reference = float(np.sum(shift[[lookup[x] for x in s.symbols]]))
            energy.update([(s.energy - reference) / s.n_atoms])
        if s.forces is not None:
            force.update(np.linalg.norm(np.asarray(s.forces, np.float64), axis=-1))
    return LabelStatistics(
        energy_mean=energy.mean if energy.count else float("nan"),
        energy_std=energy.std,
        force_mean=force.mean if force.count else float("nan"),
        force_std=force.std,
        structures=structures_seen,
        atoms=atoms_seen,
    )


class UncertaintyError(RuntimeError):
    """A run stopped by its uncertainty guard: ``step``, ``atom`` and ``value`` (eV/Å) say
    where the largest per-atom force σ first passed ``threshold``."""

    def __init__(self, step: int, atom: int, value: float, threshold: float, where: str = ""):
        self.step, self.atom, self.value, self.threshold = step, atom, value, threshold
        super().__init__(
            f"{where}step {step}: the force uncertainty of atom {atom} is {value:.3g} eV/Å, "
            f"above the guard's threshold of {threshold:.3g} eV/Å: the potential is "
            "extrapolating (configurations unlike its training data); stopped"
        )


@dataclasses.dataclass(frozen=True)
class Guard:
    """Stop or flag MD when the largest per-atom force σ (calibrated, eV/Å) passes
    ``max_force_std``. ``action``: "stop" raises :class:`UncertaintyError`, "flag" records the
    event and lets the run go on."""

    max_force_std: float
    action: str = "stop"

    def __post_init__(self):
        value = self.max_force_std
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise ValueError(f"max_force_std must be a number of eV/Å, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"max_force_std must be positive and finite (eV/Å), got {value!r}")
        if self.action not in ("stop", "flag"):
            raise ValueError(f"guard action must be 'stop' or 'flag', got {self.action!r}")


@dataclasses.dataclass(frozen=True)
class GuardEvent:
    """One step at which the guard's threshold was passed."""

    step: int
    atom: int
    value: float


__all__ = [
    "CALIBRATION_METHODS",
    "QUANTITIES",
    "Calibration",
    "Guard",
    "GuardEvent",
    "LabelStatistics",
    "UncertaintyError",
    "Welford",
    "atom_force_std",
    "calibration_factor",
    "coverage",
    "coverage_factor",
    "gaussian_nll",
    "label_statistics",
    "miscalibration_area",
    "nll_factor",
    "spread",
]
