"""``Structure``: one labelled configuration as jat's readers yield it (Å, eV, eV/Å, eV/Å³)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np


class DataError(ValueError):
    """Malformed reference data; the message names the file, the entry and the problem."""


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """A configuration with its reference labels.

    Attributes:
        symbols: element symbols, length N.
        positions: (N, 3) float64, Å.
        cell: (3, 3) float64, Å, rows are lattice vectors (zeros when there is none).
        pbc: periodicity along each lattice vector.
        energy: total energy in eV, or None.
        forces: (N, 3) float64 eV/Å, or None.
        stress: (3, 3) float64 eV/Å³, or None.
        source: where it came from, ``"file:entry"``, used in error messages.
        group: what it belongs to for splits, e.g. the ANI-1 molecule; "" when ungrouped.
        properties: further reference labels by name, in jat units: floats for molecular
            scalars, (N,) arrays for per-atom values. Empty for most readers; the QM9 reader
            fills it with the 15 QM9 properties and the Mulliken charges (keys and units:
            :data:`jat.data.qm9.PROPERTIES`).
    """

    symbols: tuple[str, ...]
    positions: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, bool, bool]
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    source: str = ""
    group: str = ""
    properties: Mapping[str, float | np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def formula(self) -> str:
        """Hill formula, e.g. ``C2H6O``."""
        from ase.formula import Formula

        return Formula.from_list(list(self.symbols)).format("hill")

    def to_atoms(self) -> Any:
        """An ASE ``Atoms`` with a single-point calculator holding the labels."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(self.symbols, positions=self.positions, cell=self.cell, pbc=self.pbc)
        labels: dict[str, Any] = {}
        if self.energy is not None:
            labels["energy"] = self.energy
        if self.forces is not None:
            labels["forces"] = self.forces
        if self.stress is not None:
            from ase.stress import full_3x3_to_voigt_6_stress

            labels["stress"] = full_3x3_to_voigt_6_stress(self.stress)
        if labels:
            atoms.calc = SinglePointCalculator(atoms, **labels)
        return atoms
