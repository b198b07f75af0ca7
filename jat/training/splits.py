"""Seeded train/validation/test splits and the per-species energy reference.

Splits are by configuration, or by molecule (ANI-1): whole molecules are held out for the test
set and a fraction of the remaining molecules' conformations for validation, as in the thesis.
Formulas can be excluded from training altogether and evaluated out of sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jat.data.structure import Structure

SETS = ("train", "validation", "test", "excluded")


def _count(spec: float, total: int) -> int:
    """A fraction (< 1) of ``total`` rounded, or a number (>= 1) of items."""
    if spec < 0:
        raise ValueError(f"split sizes must be >= 0, got {spec}")
    n = round(spec * total) if spec < 1 else int(spec)
    if n > total:
        raise ValueError(f"asked for {n} items but only {total} are available")
    return n


def split_indices(
    structures: Sequence[Structure],
    *,
    by: str = "configuration",
    validation: float = 0.1,
    test: float | str = 0.0,
    n_train: int | None = None,
    exclude_formulas: Sequence[str] = (),
    seed: int = 0,
    kfold: int | None = None,
    fold: int | None = None,
) -> dict[str, list[int]]:
    """Indices of the training, validation, test and excluded structures.

    ``by="configuration"``: a seeded permutation of all structures gives ``test`` then
    ``validation`` (fractions < 1 or counts >= 1), the rest trains. ``by="molecule"``: ``test``
    counts whole molecules (``Structure.group``, or the formula when ungrouped), held out
    entirely; ``validation`` is drawn from the conformations of the other molecules.
    ``n_train`` caps the training set; ``test="rest"`` (by configuration, with ``n_train``):
    the validation set is drawn first, then ``n_train`` training structures, and every one left
    is tested (QM9's standard 110 000 / 10 000 / rest). Structures whose formula is in
    ``exclude_formulas`` go to ``"excluded"``. With ``kfold`` k and ``fold`` i, ``validation``
    is ignored: what the test set leaves is cut into k folds (the same seeded order for every
    i) and fold i validates.
    """
    if by not in ("configuration", "molecule"):
        raise ValueError(f"split by must be 'configuration' or 'molecule', got {by!r}")
    rest_to_test = test == "rest"
    if rest_to_test:
        if n_train is None or by != "configuration" or kfold is not None:
            raise ValueError("test='rest' needs n_train, by='configuration' and no kfold")
        test = 0
    rng = np.random.default_rng([seed, 7919])
    excluded_formulas = {_normalise_formula(f) for f in exclude_formulas}
    if excluded_formulas:
        is_excluded = [s.formula in excluded_formulas for s in structures]
        excluded = [k for k, x in enumerate(is_excluded) if x]
        pool = [k for k, x in enumerate(is_excluded) if not x]
    else:
        excluded, pool = [], list(range(len(structures)))
    if by == "molecule":
        keys = [s.group or s.formula for s in (structures[k] for k in pool)]
        groups = sorted(set(keys))
        order = rng.permutation(len(groups))
        n_test = _count(test, len(groups))
        test_groups = {groups[g] for g in order[:n_test]}
        in_test = [key in test_groups for key in keys]
        test_idx = [k for k, t in zip(pool, in_test, strict=True) if t]
        rest = [k for k, t in zip(pool, in_test, strict=True) if not t]
        rest = [rest[k] for k in rng.permutation(len(rest))]
    else:
        pool = [pool[k] for k in rng.permutation(len(pool))]
        n_test = _count(test, len(pool))
        test_idx, rest = pool[:n_test], pool[n_test:]
    if kfold is not None:
        if fold is None or not 0 <= fold < kfold:
            raise ValueError(f"fold must be one of 0 … {kfold - 1} with kfold={kfold}, got {fold}")
        if len(rest) < kfold:
            raise ValueError(f"kfold={kfold} needs at least {kfold} structures, got {len(rest)}")
        folds = np.array_split(np.asarray(rest), kfold)
        val_idx = folds[fold].tolist()
        train_idx = [k for i, f in enumerate(folds) if i != fold for k in f.tolist()]
    else:
        n_val = _count(validation, len(rest))
        val_idx, train_idx = rest[:n_val], rest[n_val:]
    if n_train is not None:
        if n_train > len(train_idx):
            raise ValueError(f"n_train={n_train} but only {len(train_idx)} structures remain")
        if rest_to_test:
            test_idx = train_idx[n_train:]
        train_idx = train_idx[:n_train]
    if not train_idx:
        raise ValueError("the split leaves no training structures")
    return {
        "train": sorted(train_idx),
        "validation": sorted(val_idx),
        "test": sorted(test_idx),
        "excluded": sorted(excluded),
    }


def _normalise_formula(formula: str) -> str:
    from ase.formula import Formula

    return Formula(formula).format("hill")


def fit_energy_reference(
    structures: Sequence[Structure], species: Sequence[str], forces_trained: bool
) -> tuple[np.ndarray, float]:
    """Per-species shift μ_Z (eV) by least squares of the energies on element counts, and a
    scale (eV): the RMS force component when forces are present (× 1 Å), else the RMS residual
    energy per atom. Returns (μ (S,), scale)."""
    lookup = {s: k for k, s in enumerate(species)}
    rows, energies = [], []  # one pass; per structure only its element counts are kept
    force_squares, force_components = 0.0, 0
    for s in structures:
        if s.energy is not None:
            rows.append(np.bincount([lookup[x] for x in s.symbols], minlength=len(species)))
            energies.append(s.energy)
        if s.forces is not None:
            f = np.asarray(s.forces, np.float64)
            force_squares += float(np.sum(f**2))
            force_components += f.size
    shift = np.zeros(len(species))
    residual = np.zeros(0)
    if rows:
        counts = np.array(rows, np.float64)
        energies = np.array(energies, np.float64)
        shift = np.linalg.lstsq(counts, energies, rcond=None)[0]
        n_atoms = counts.sum(axis=1)
        residual = (energies - counts @ shift) / n_atoms
    if forces_trained and force_components:
        scale = float(np.sqrt(force_squares / force_components))
    elif residual.size:
        scale = float(np.sqrt(np.mean(residual**2)))
    else:
        scale = 1.0
    if not (math.isfinite(scale) and scale > 1e-6):
        scale = 1.0
    return shift, scale
