"""Bad input never gives a silently wrong answer: every evaluation path checks every call.

Regression tests of the reliability issue: coincident atoms, cells that turn invalid after a
successful call, non-integer atomic numbers, an infinite cutoff, float32 precision far from the
origin, and a cell far smaller than the cutoff.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from conftest import SPECIES, potential, random_crystal, random_molecule

import jat
import jat.md
from jat.data import DataError, Structure
from jat.graph import CapacityError
from jat.training.dataset import build_dataset


def _coincident(atoms: Atoms, i: int = 2, j: int = 5) -> Atoms:
    atoms = atoms.copy()
    atoms.positions[j] = atoms.positions[i]
    return atoms


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("make", [random_molecule, random_crystal], ids=["molecule", "crystal"])
def test_coincident_atoms_are_an_error_in_compute(make, dtype):
    pot = potential("jat", dtype)
    bad = _coincident(make(9, seed=1))
    with pytest.raises(ValueError, match=r"atoms 2 \(\w+\) and 5 \(\w+\) are 0 Å apart"):
        pot.compute(bad)
    with pytest.raises(ValueError, match=r"structure 1: atoms 2 .* and 5 .*same position"):
        pot.compute_batch([make(9, seed=1), bad])
    zbl = pot.with_repulsion("zbl")  # no infinite energy either
    with pytest.raises(ValueError, match="same position"):
        zbl.compute(bad)


def test_coincident_atoms_are_an_error_in_the_calculator():
    pot = potential("schnet")
    atoms = random_crystal(9, seed=1)
    atoms.calc = pot.calculator()
    atoms.get_forces()
    atoms.positions[5] = atoms.positions[2]  # after a good step, in the same list
    with pytest.raises(ValueError, match=r"atoms 2 \(\w+\) and 5 \(\w+\) are 0 Å apart"):
        atoms.get_forces()
    atoms.positions[5] += 0.7  # apart again: the calculator recovers
    res = pot.compute(atoms)
    np.testing.assert_allclose(atoms.get_forces(), res.forces, atol=1e-10)


def test_coincident_atoms_are_an_error_in_jax_md():
    pot = potential("jat")
    atoms = random_crystal(9, seed=1, length=8.0)
    with jax.enable_x64(True):
        system = jat.md.jax_md_system(pot, atoms, neighbor_list="jat")
        R = jnp.asarray(system.positions)
        with pytest.raises(ValueError, match="same position"):
            system.neighbor_fn.allocate(R.at[5].set(R[2]))
        nbrs = system.neighbor_fn.allocate(R)
        moved = R.at[5].set(R[2])
        assert np.isnan(float(jax.jit(system.energy_fn)(moved, neighbor=nbrs)))  # no finite lie
        updated = jax.jit(lambda n, r: n.update(r))(nbrs, moved)
        assert jat.md.list_error(updated) & int(jat.graph.GraphError.COINCIDENT)


def test_coincident_atoms_in_training_data_name_the_entry():
    atoms = _coincident(random_crystal(9, seed=1))
    good = random_crystal(9, seed=2)

    def structure(a, source):
        return Structure(tuple(a.get_chemical_symbols()), a.positions, a.cell.array,
                         (True,) * 3, source=source)

    with pytest.raises(DataError, match=r"data\.xyz:7: atoms 2 \(\w+\) and 5 \(\w+\)"):
        build_dataset(
            [structure(good, "data.xyz:6"), structure(atoms, "data.xyz:7")],
            SPECIES, 3.5, np.zeros(len(SPECIES)), [9],
        )


@pytest.mark.parametrize("cell", [np.zeros((3, 3)), np.full((3, 3), np.nan), np.eye(3) * np.inf,
                                  np.diag([5.0, 5.0, 0.0])])
def test_invalid_cell_is_refused_on_every_call(cell):
    pot = potential("jat")
    atoms = random_crystal(8, seed=4)
    pot.compute(atoms)  # a good call first: nothing is cached that skips the checks
    bad = atoms.copy()
    bad.cell = cell
    bad.pbc = True
    with pytest.raises(ValueError, match="cell"):
        pot.compute(bad)
    with pytest.raises(ValueError, match="cell"):
        pot.compute(positions=atoms.positions, numbers=atoms.numbers, cell=cell, pbc=True)
    atoms.calc = pot.calculator()
    atoms.get_forces()
    atoms.cell = cell
    with pytest.raises(ValueError, match="cell"):
        atoms.get_forces()
    with pytest.raises(ValueError, match="cell|box"):
        jat.md.jax_md_energy_fn(pot, atoms.get_chemical_symbols(), jat.md.box_from_cell(cell),
                                neighbor_list="jat")


def test_non_integer_atomic_numbers_and_bad_arguments_are_refused():
    pot = potential("jat")
    atoms = random_molecule(4, seed=0)
    with pytest.raises(ValueError, match=r"atom 1: atomic number 6\.5 is not a whole number"):
        pot.compute(positions=atoms.positions, numbers=[1.0, 6.5, 7.0, 8.0])
    with pytest.raises(ValueError, match="not an atomic number"):
        pot.compute(positions=atoms.positions, numbers=[1, 0, 7, 8])
    with pytest.raises(ValueError, match="integers"):
        pot.compute(positions=atoms.positions, numbers=[True, False, True, True])
    res = pot.compute(positions=atoms.positions, numbers=[1.0, 6.0, 7.0, 8.0])  # whole floats
    assert np.isfinite(res.energy)
    for cutoff in (np.inf, np.nan, 0.0, -1.0, "5"):
        with pytest.raises(ValueError, match="cutoff"):
            jat.Potential.create("jat", SPECIES, cutoff)
    for bad in ({"heads": 0}, {"width": 0}, {"layers": -1}, {"layers": 10**9}):
        with pytest.raises(jat.models.HyperparameterError, match=next(iter(bad))):
            jat.Potential.create("jat", SPECIES, 3.5, **bad)
    with pytest.raises(ValueError, match="seed"):
        jat.Potential.create("jat", SPECIES, 3.5, seed=-1)


@pytest.mark.parametrize("make", [random_molecule, random_crystal], ids=["molecule", "crystal"])
def test_float32_keeps_its_precision_far_from_the_origin(make):
    pot32 = potential("jat", "float32")
    pot64 = potential("jat", "float64")
    atoms = make(9, seed=3)
    far = atoms.copy()
    far.positions += 1e6
    ref = pot64.compute(atoms)
    for structure in (atoms, far):
        res = pot32.compute(structure)
        np.testing.assert_allclose(res.forces, ref.forces, atol=1e-4)
        assert res.energy == pytest.approx(ref.energy, abs=1e-4)
    far.calc = pot32.calculator()
    np.testing.assert_allclose(far.get_forces(), ref.forces, atol=1e-4)
    with jax.enable_x64(False):
        system = jat.md.jax_md_system(pot32, far, neighbor_list="jat")
        R = jnp.asarray(system.positions)
        nbrs = system.neighbor_fn.allocate(R)
        forces = -np.asarray(jax.grad(system.energy_fn)(R, neighbor=nbrs)) @ system.rotation
    np.testing.assert_allclose(forces, ref.forces, atol=1e-4)


def test_cell_far_smaller_than_the_cutoff_is_refused_quickly():
    pot = potential("jat", cutoff=5.0)
    tiny = Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 1e-3, pbc=True)
    start = time.perf_counter()
    with pytest.raises(CapacityError, match="far smaller than the cutoff"):
        pot.compute(tiny)
    with pytest.raises(CapacityError, match="far smaller than the cutoff"):
        jat.graph.neighbor_list(tiny.positions, 5.0, tiny.cell[:], True)
    tiny.calc = pot.calculator()
    with pytest.raises(CapacityError, match="far smaller than the cutoff"):
        tiny.get_forces()
    assert time.perf_counter() - start < 30  # refused up front, not after filling the memory
