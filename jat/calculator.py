"""ASE calculator backed by a :class:`jat.Potential`."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress


class JATCalculator(Calculator):
    """Energy (eV), free energy, per-atom energies, forces (eV/Å) and stress (eV/Å³, Voigt order).

    Stress is available for fully periodic structures only. The compiled function and the
    neighbour-list bounds are cached in the potential, so an MD run compiles once per system size.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, potential: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(np.all(self.atoms.get_pbc()))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                "stress needs a fully periodic structure (pbc = True on all axes)"
            )
        res = self.potential.compute(self.atoms, forces=True, stress=periodic)
        self.results = {
            "energy": res.energy,
            "free_energy": res.energy,
            "energies": res.energies,
            "forces": res.forces,
        }
        if res.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(res.stress)
