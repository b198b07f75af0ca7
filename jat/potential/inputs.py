"""Host-side checks of what a user passes to a potential, run on every call (cheap, float64).

``Potential.compute``/``compute_batch``, the ASE calculator and ``jat.md`` all turn their input
into :class:`StructureArrays` here, so every path refuses the same things with the same
messages: non-finite positions, unknown or non-integer atomic numbers, a zero, singular or
non-finite cell along a periodic axis. (Coincident atoms are found by the compiled neighbour
search and reported by the caller.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from jat.graph.geometry import check_cell, normalize_pbc

ATOM_QUANTUM = 8  # batches and the ASE calculator pad atoms to a multiple of this


def atom_slots(n: int, quantum: int = ATOM_QUANTUM) -> int:
    """Atom slots for ``n`` atoms: a multiple of ``quantum`` (at least one slot)."""
    return max(quantum, -(-n // quantum) * quantum)


@dataclasses.dataclass(frozen=True)
class StructureArrays:
    """One checked structure: positions (N, 3) Å, species (N,) int32 indices into the
    potential's species, numbers (N,) atomic numbers, cell (3, 3) Å (zeros without one),
    pbc."""

    positions: np.ndarray
    species: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, bool, bool]

    @property
    def n_atoms(self) -> int:
        return len(self.positions)


class SpeciesTable:
    """Atomic number → species index of a potential (−1 for elements it does not know)."""

    def __init__(self, species: Sequence[str]):
        self.species = tuple(species)
        self.lookup = np.full(len(chemical_symbols), -1, np.int32)
        for k, symbol in enumerate(self.species):
            self.lookup[atomic_numbers[symbol]] = k

    def indices(self, numbers: np.ndarray) -> np.ndarray:
        """(N,) species indices of atomic numbers (N,); ValueError naming the first unknown."""
        numbers = np.asarray(numbers)
        known = (numbers > 0) & (numbers < len(self.lookup))
        index = np.where(known, self.lookup[np.where(known, numbers, 0)], -1)
        if np.any(index < 0):
            k = int(np.argmax(index < 0))
            z = int(numbers[k])
            name = chemical_symbols[z] if known[k] else f"atomic number {z}"
            raise ValueError(
                f"atom {k} is {name}, an element this potential was not trained on "
                f"(trained species: {', '.join(self.species)})"
            )
        return index.astype(np.int32)


def atomic_numbers_of(numbers: Any = None, symbols: Sequence[str] | None = None) -> np.ndarray:
    """(N,) int atomic numbers from integers (float values must be whole numbers) or symbols."""
    if symbols is not None:
        out = []
        for k, s in enumerate(symbols):
            z = atomic_numbers.get(str(s))
            if not z:
                raise ValueError(f"atom {k}: {s!r} is not an element symbol")
            out.append(z)
        return np.asarray(out, np.int64)
    arr = np.asarray(numbers)
    if arr.ndim != 1:
        raise ValueError(f"numbers must be one atomic number per atom (N,), got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or
                                 np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"atomic numbers must be integers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if np.any(bad):
            k = int(np.argmax(bad))
            raise ValueError(f"atom {k}: atomic number {float(arr[k]):g} is not a whole number")
    z = arr.astype(np.int64)
    bad = (z < 1) | (z >= len(chemical_symbols))
    if np.any(bad):
        k = int(np.argmax(bad))
        raise ValueError(f"atom {k}: {int(z[k])} is not an atomic number (1…118)")
    return z


def check_positions(positions: Any) -> np.ndarray:
    """(N, 3) float64 finite positions; ValueError naming the first bad atom."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    bad = ~np.all(np.isfinite(pos), axis=1)
    if np.any(bad):
        k = int(np.argmax(bad))
        raise ValueError(f"positions of atom {k} are not finite: {pos[k].tolist()}")
    return pos


def structure_arrays(
    table: SpeciesTable,
    atoms: Any = None,
    *,
    positions: Any = None,
    numbers: Any = None,
    symbols: Sequence[str] | None = None,
    cell: Any = None,
    pbc: Any = None,
) -> StructureArrays:
    """Check an ASE ``Atoms`` (or the arrays: positions with numbers or symbols, optionally cell
    and pbc) and return it as arrays. pbc defaults to "periodic iff a non-zero cell"."""
    if atoms is not None:
        positions = atoms.get_positions()
        numbers = atoms.get_atomic_numbers()
        cell = np.asarray(atoms.get_cell()[:], dtype=np.float64)
        pbc = tuple(bool(p) for p in atoms.get_pbc())
    elif positions is None:
        raise ValueError("pass an ASE Atoms, or positions with numbers or symbols")
    pos = check_positions(positions)
    if numbers is None and symbols is None:
        raise ValueError("pass numbers or symbols with positions")
    z = atomic_numbers_of(numbers, symbols)
    if len(z) != len(pos):
        raise ValueError(f"{len(z)} species for {len(pos)} positions")
    if cell is not None:
        cell = np.asarray(cell, dtype=np.float64)
    has_cell = cell is not None and cell.shape == (3, 3) and bool(np.any(cell))
    flags = normalize_pbc(pbc, has_cell)
    checked = check_cell(cell, flags)
    return StructureArrays(pos, table.indices(z), z, checked, flags)


__all__ = [
    "ATOM_QUANTUM",
    "SpeciesTable",
    "atom_slots",
    "StructureArrays",
    "atomic_numbers_of",
    "check_positions",
    "structure_arrays",
]
