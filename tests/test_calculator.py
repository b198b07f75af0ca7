"""``jat.JATCalculator``: equal to ``Potential.compute``, neighbour-list reuse with a skin,
rebuilds, capacity growth, errors, and ASE dynamics and optimisers on top of it."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet
from ase.stress import full_3x3_to_voigt_6_stress
from conftest import MODELS, potential, random_crystal, random_molecule

from jat.calculator import JATCalculator


def _assert_matches(atoms, pot, tol=1e-10):
    """The attached calculator's results equal a fresh ``pot.compute`` (float64)."""
    res = pot.compute(atoms)
    assert atoms.get_potential_energy() == pytest.approx(res.energy, rel=tol, abs=tol)
    np.testing.assert_allclose(atoms.get_potential_energies(), res.energies, atol=tol)
    np.testing.assert_allclose(atoms.get_forces(), res.forces, atol=tol)
    if atoms.pbc.all():
        np.testing.assert_allclose(
            atoms.get_stress(), full_3x3_to_voigt_6_stress(res.stress), atol=tol
        )


def _crystal():
    return random_crystal(8, seed=4)


@pytest.mark.compile_group("{model}-crystal")
@pytest.mark.parametrize("model", MODELS)
def test_calculator_equals_compute(model):
    pot = potential(model)
    atoms = _crystal()
    atoms.calc = pot.calculator()
    res = pot.compute(atoms)
    assert atoms.get_potential_energy() == pytest.approx(res.energy, rel=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(res.energy)
    np.testing.assert_allclose(atoms.get_potential_energies(), res.energies, atol=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), res.forces, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), res.stress, atol=1e-12)
    assert atoms.calc.dtype == "float64"


@pytest.mark.compile_group("{model}-molecule")
@pytest.mark.parametrize("model", MODELS)
def test_calculator_molecule(model):
    pot = potential(model)
    atoms = random_molecule(9, seed=3)
    atoms.calc = pot.calculator()
    _assert_matches(atoms, pot)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_results_are_cached_per_state():
    pot = potential("jat")
    atoms = _crystal()
    calc = pot.calculator()
    atoms.calc = calc
    calls = []
    original = calc._compute

    def counting(*args):
        calls.append(1)
        return original(*args)

    calc._compute = counting
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    atoms.get_potential_energies()
    assert len(calls) == 1
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert len(calls) == 2


def test_float32_default_and_float64_on_request():
    pot32 = potential("jat", "float32")
    atoms = _crystal()
    calc = pot32.calculator()
    assert calc.dtype == "float32"
    atoms.calc = calc
    res = pot32.compute(atoms)
    assert atoms.get_potential_energy() == pytest.approx(res.energy, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), res.forces, atol=1e-5)

    calc64 = pot32.calculator(dtype="float64")
    assert calc64.dtype == "float64" and pot32.dtype == "float32"
    pot64 = pot32.with_dtype("float64")
    assert pot32.with_dtype("float64") is pot64  # cached: shares its compiled functions
    assert calc64.potential is pot64
    atoms.calc = calc64
    _assert_matches(atoms, pot64, tol=1e-12)
    # float32 parameters cast to float64 exactly: the two agree to float32 precision
    assert atoms.get_potential_energy() == pytest.approx(res.energy, rel=1e-5, abs=1e-5)


def test_skin_reuse_and_rebuild():
    pot = potential("schnet")
    atoms = _crystal()
    calc = JATCalculator(pot, skin=0.6)
    atoms.calc = calc
    atoms.get_forces()
    assert calc.rebuilds == 1 and calc.spec.cutoff == pytest.approx(pot.cutoff + 0.6)
    start = atoms.get_positions()
    rng = np.random.default_rng(0)
    for _ in range(5):  # every atom stays within skin/2 = 0.3 Å of where the list was built
        step = rng.normal(size=(len(atoms), 3))
        step *= 0.29 / np.linalg.norm(step, axis=1, keepdims=True)
        atoms.positions = start + step
        _assert_matches(atoms, pot, tol=1e-9)
    assert calc.rebuilds == 1
    atoms.positions[3] = start[3] + [0.31, 0.0, 0.0]  # one atom beyond skin/2
    _assert_matches(atoms, pot, tol=1e-9)
    assert calc.rebuilds == 2


def test_pairs_entering_the_cutoff_between_rebuilds():
    """A pair outside the cutoff but inside cutoff + skin at the build comes inside the cutoff
    while both atoms move less than skin/2: no rebuild, and the results are exact."""
    pot = potential("jat")
    rc = pot.cutoff
    atoms = Atoms("ON", positions=[[0, 0, 0], [0, 0, rc + 0.4]])
    calc = JATCalculator(pot, skin=1.0)
    atoms.calc = calc
    np.testing.assert_array_equal(atoms.get_forces(), np.zeros((2, 3)))  # no edge yet
    atoms.positions = [[0, 0, 0.45], [0, 0, rc - 0.05]]  # each moved 0.45 Å; now rc - 0.5 apart
    _assert_matches(atoms, pot)
    assert np.abs(atoms.get_forces()).max() > 1e-6
    assert calc.rebuilds == 1
    atoms.positions = [[0, 0, 0.0], [0, 0, rc - 0.5]]  # atom 1 moved 0.55 Å from the build
    _assert_matches(atoms, pot)
    assert calc.rebuilds == 2


def test_atoms_crossing_the_periodic_boundary():
    pot = potential("jat")
    atoms = _crystal()
    frac = atoms.get_scaled_positions()
    frac[0] = [0.999, 0.5, 0.5]
    atoms.set_scaled_positions(frac)
    calc = JATCalculator(pot, skin=1.0)
    atoms.calc = calc
    _assert_matches(atoms, pot)
    a = atoms.cell[0] / np.linalg.norm(atoms.cell[0])
    atoms.positions[0] += 0.2 * a  # out of the cell, unwrapped: the stored shifts still hold
    _assert_matches(atoms, pot)
    assert calc.rebuilds == 1
    atoms.wrap()  # jumps by a lattice vector: must rebuild, never reuse stale shifts
    _assert_matches(atoms, pot)
    assert calc.rebuilds == 2


def test_cell_change_rebuilds():
    pot = potential("jat")
    atoms = _crystal()
    calc = pot.calculator()
    atoms.calc = calc
    atoms.get_forces()
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    _assert_matches(atoms, pot)
    assert calc.rebuilds == 2


def test_capacity_grows_on_overflow_then_stays():
    pot = potential("jat")
    dense = random_crystal(12, seed=6, length=6.0)
    dilute = dense.copy()
    dilute.set_cell(dense.cell * 1.6, scale_atoms=True)
    calc = pot.calculator()
    dilute.calc = calc
    dilute.get_forces()
    small = (calc.spec.capacity, calc.edge_capacity)
    assert calc.allocations == 1
    dense.calc = calc  # same atoms, far more neighbours: list and model edges overflow
    _assert_matches(dense, pot)
    assert calc.allocations == 2
    assert calc.spec.capacity > small[0] and calc.edge_capacity > small[1]
    shapes = set(calc.shapes)
    rng = np.random.default_rng(1)
    start = dense.get_positions()
    for _ in range(10):  # an MD-like sequence of small moves: no new shape, no recompilation
        dense.positions = start + 0.02 * rng.normal(size=start.shape)
        dense.get_forces()
    assert calc.shapes == shapes
    assert calc.allocations == 2


def test_atom_count_and_species_changes():
    pot = potential("jat")
    atoms = _crystal()
    calc = pot.calculator()
    atoms.calc = calc
    atoms.get_forces()
    atoms.numbers[0] = 8 if atoms.numbers[0] != 8 else 1  # same count, other species
    _assert_matches(atoms, pot)
    assert calc.rebuilds == 1 and calc.allocations == 1  # the list does not depend on species
    atoms.append("H")  # one more atom
    atoms.positions[-1] = atoms.cell.sum(axis=0) / 2 + 0.3
    _assert_matches(atoms, pot)
    assert calc.allocations == 2
    del atoms[[0, 1, 2]]  # fewer atoms
    _assert_matches(atoms, pot)
    assert calc.allocations == 3


def test_errors():
    pot = potential("jat")
    calc = pot.calculator()
    atoms = random_molecule(4, seed=1)
    atoms.numbers[2] = 17
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"atom 2 is Cl.*trained species: H, C, N, O"):
        atoms.get_potential_energy()

    atoms = random_molecule(4, seed=1)
    atoms.pbc = True  # no cell
    atoms.calc = calc
    with pytest.raises(ValueError, match="singular or zero"):
        atoms.get_potential_energy()
    atoms.cell = [[5, 0, 0], [0, 5, 0], [5, 5, 0]]  # flat
    with pytest.raises(ValueError, match="singular or zero"):
        atoms.get_potential_energy()

    atoms = random_molecule(4, seed=1)
    atoms.positions[1, 2] = np.nan
    atoms.calc = calc
    with pytest.raises(ValueError, match="atom 1 are not finite"):
        atoms.get_forces()

    with pytest.raises(ValueError, match="skin"):
        pot.calculator(skin=-1.0)
    with pytest.raises(ValueError, match="dtype"):
        pot.calculator(dtype="float16")


def test_mixed_pbc_slab():
    pot = potential("jat")
    atoms = random_crystal(8, seed=4)
    atoms.pbc = [True, True, False]
    atoms.calc = pot.calculator()
    _assert_matches(atoms, pot)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_velocity_verlet_conserves_energy():
    pot = potential("jat")
    atoms = _crystal()
    calc = pot.calculator(skin=0.5)
    atoms.calc = calc
    rng = np.random.default_rng(0)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 300))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    total = []
    dyn.attach(lambda: total.append(atoms.get_total_energy()), interval=1)
    dyn.run(20)
    assert len(total) == 21
    kinetic = atoms.get_kinetic_energy()
    assert kinetic > 0.05
    assert np.ptp(total) < 1e-3 * len(atoms)  # eV; kinetic energy is ~0.2 eV
    assert calc.rebuilds <= 2
    _assert_matches(atoms, pot, tol=1e-9)


def test_ase_drivers_run():
    """Langevin, Berendsen NPT (needs the stress), BFGS and FIRE drive the calculator."""
    from ase.md.langevin import Langevin
    from ase.md.nptberendsen import NPTBerendsen
    from ase.optimize import BFGS, FIRE

    pot = potential("jat")
    atoms = _crystal()
    atoms.calc = pot.calculator()
    Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01, fixcm=False,
             rng=np.random.default_rng(0)
             ).run(3)
    volume = atoms.get_volume()
    NPTBerendsen(atoms, 0.5 * units.fs, temperature_K=300, pressure_au=1e4 * units.bar,
                 taut=10 * units.fs, taup=50 * units.fs, compressibility_au=1e-3 / units.bar
                 ).run(3)
    assert atoms.get_volume() != volume  # the cell moved: rebuilt each step, still exact
    _assert_matches(atoms, pot, tol=1e-9)
    molecule = random_molecule(9, seed=3)
    molecule.calc = pot.calculator()
    e0 = molecule.get_potential_energy()
    BFGS(molecule, logfile=None).run(fmax=0.05, steps=5)
    FIRE(molecule, logfile=None).run(fmax=0.05, steps=5)
    assert molecule.get_potential_energy() < e0
    _assert_matches(molecule, pot, tol=1e-9)
