"""Host-side geometry checks and the float32-safe frame of a structure (float64 numpy)."""

from __future__ import annotations

import numpy as np

from jat.graph._common import heights, inverse, search_basis


def normalize_pbc(pbc, has_cell: bool) -> tuple[bool, bool, bool]:
    """``pbc`` (None, a bool or 3 bools) as three bools; None means "periodic iff a cell"."""
    if pbc is None:
        return (bool(has_cell),) * 3
    flags = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    return tuple(bool(p) for p in flags)


def check_cell(cell, pbc: tuple[bool, bool, bool]) -> np.ndarray:
    """``cell`` (3, 3) Å as float64, checked for the periodic axes of ``pbc``: finite, with
    independent lattice vectors along every periodic axis. Zeros without periodicity (the cell
    then plays no part). Raises ValueError."""
    periodic = [k for k in range(3) if pbc[k]]
    if cell is None:
        if periodic:
            raise ValueError(f"pbc={list(pbc)} needs a cell (rows are lattice vectors)")
        return np.zeros((3, 3))
    c = np.asarray(cell, dtype=np.float64)
    if c.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {c.shape}")
    if not periodic:
        return np.zeros((3, 3))  # no periodic image: the cell plays no part
    rows = c[periodic]
    if not np.all(np.isfinite(rows)):
        raise ValueError(f"cell contains NaN or inf along the periodic axes: {c.tolist()}")
    free = [k for k in range(3) if not pbc[k]]
    if free and not np.all(np.isfinite(c[free])):  # free rows carry no image: keep them finite
        c = c.copy()
        c[free] = np.where(np.isfinite(c[free]), c[free], 0.0)
    scale = max(1.0, float(np.abs(rows).max()))
    if np.linalg.matrix_rank(rows, tol=1e-8 * scale) < len(periodic):
        axes = "".join("xyz"[k] for k in periodic)
        raise ValueError(
            f"pbc={list(pbc)} needs {len(periodic)} independent lattice vectors along the "
            f"periodic axes ({axes}), but the cell {c.tolist()} is singular or zero there: set "
            "the cell (rows are lattice vectors) or use pbc=False"
        )
    return c


def cell_heights(cell) -> np.ndarray:
    """(3,) distances (Å) between opposite faces of the cell (rows are lattice vectors)."""
    return heights(np.asarray(cell, np.float64), np)


def reduce_positions(positions, cell, pbc, mask=None) -> np.ndarray:
    """Positions (N, 3) Å in a frame where float32 keeps their precision: wrapped into the cell
    along periodic axes, and moved so that the centre of the real atoms (``mask``) lies at the
    origin along free axes. Energies, forces and stress do not change (translation and
    periodic-image invariance), but a molecule 10⁶ Å from the origin no longer loses 0.06 Å to
    float32 rounding. (A caller that keeps a neighbour list between calls translates by one
    fixed vector instead, so that no atom jumps; see the ASE calculator.)
    """
    pos = np.asarray(positions, np.float64)
    if pos.size == 0:
        return pos
    real = slice(None) if mask is None else np.asarray(mask, bool)
    if not any(pbc):  # free: (pos B⁻¹ − centre) B is pos − its centre for any basis B
        return pos - (pos[real].mean(axis=0) if pos[real].size else 0.0)
    basis = search_basis(np.asarray(cell, np.float64), tuple(pbc), np)
    frac = pos @ inverse(basis, np)
    periodic = np.asarray(pbc, bool)
    centre = frac[real].mean(axis=0) if pos[real].size else np.zeros(3)
    frac = np.where(periodic, frac - np.floor(frac), frac - centre)
    return frac @ basis


__all__ = ["cell_heights", "check_cell", "normalize_pbc", "reduce_positions"]
