"""``jat.md``: JAX-MD energy functions equal ``Potential.compute`` (orthorhombic and triclinic
cells, Cartesian and fractional coordinates, both neighbour lists) and drive a jitted NVE loop."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms, units
from conftest import SPECIES, potential, random_crystal, random_molecule

import jat.md

# jax-md's own neighbour list warns about an int64 -> int32 scatter under x64.
pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types")


def _orthorhombic(n=40, seed=3):
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        atoms = Atoms(
            list(rng.choice(SPECIES, n)),
            scaled_positions=rng.uniform(size=(n, 3)),
            cell=np.diag([9.0, 10.0, 11.0]),
            pbc=True,
        )
        d = atoms.get_all_distances(mic=True)[np.triu_indices(n, 1)]
        if d.min() > 0.9:
            return atoms
    raise RuntimeError("could not place atoms")  # pragma: no cover


def _triclinic():
    atoms = random_crystal(40, seed=2, length=10.0)  # random cell: not lower triangular
    assert not np.allclose(atoms.cell.array, np.tril(atoms.cell.array))
    return atoms


CELLS = {"orthorhombic": _orthorhombic, "triclinic": _triclinic}
BACKENDS = [("jax_md", False), ("jax_md", True), ("jat", False)]


def _energy_forces(system, positions=None):
    R = jnp.asarray(system.positions if positions is None else positions)
    nbrs = system.neighbor_fn.allocate(R)
    assert not bool(nbrs.did_buffer_overflow)
    energy, grad = jax.jit(jax.value_and_grad(system.energy_fn))(R, neighbor=nbrs)
    forces = -np.asarray(grad) @ system.rotation  # back to the original frame
    return float(energy), forces, nbrs


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: f"{b[0]}{'-frac' if b[1] else ''}")
def test_energy_and_forces_equal_compute(cell, backend):
    neighbor_list, fractional = backend
    if neighbor_list == "jax_md":
        pytest.importorskip("jax_md")
    pot = potential("jat")
    atoms = CELLS[cell]()
    res = pot.compute(atoms)
    with jax.enable_x64(True):
        system = jat.md.jax_md_system(
            pot, atoms, fractional=fractional, neighbor_list=neighbor_list
        )
        rotated = cell == "triclinic"
        assert np.allclose(system.rotation, np.eye(3)) != rotated
        assert np.allclose(system.box, np.triu(system.box))  # JAX-MD's box: upper triangular
        energy, forces, _ = _energy_forces(system)
    assert energy == pytest.approx(res.energy, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(forces, res.forces, atol=1e-10)


def test_box_convention():
    cell = np.array([[5.0, 0.0, 0.0], [1.0, 6.0, 0.0], [0.5, 0.7, 7.0]])  # rows: a, b, c
    box = jat.md.box_from_cell(cell)
    frac = np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(box @ frac, frac @ cell)  # JAX-MD: r = box s; ASE: r = s cell
    np.testing.assert_allclose(jat.md.cell_from_box(box), cell)
    atoms = _triclinic()
    rotated, q = jat.md.standard_form(atoms)
    np.testing.assert_allclose(rotated.cell.array, np.tril(rotated.cell.array), atol=1e-12)
    np.testing.assert_allclose(rotated.positions, atoms.positions @ q.T, atol=1e-12)


def test_stress_matches_jax_md_quantity():
    quantity = pytest.importorskip("jax_md.quantity")
    pot = potential("jat")
    atoms = _triclinic()
    res = pot.compute(atoms)
    with jax.enable_x64(True):
        system = jat.md.jax_md_system(pot, atoms)
        R = jnp.asarray(system.positions)
        nbrs = system.neighbor_fn.allocate(R)
        sigma = quantity.stress(system.energy_fn, R, jnp.asarray(system.box), neighbor=nbrs)
    q = system.rotation
    # JAX-MD's stress is minus ASE's (-(1/V) dU/dε), in the rotated frame
    np.testing.assert_allclose(-q.T @ np.asarray(sigma) @ q, res.stress, atol=1e-10)


def test_free_space_molecule():
    pot = potential("schnet")
    atoms = random_molecule(9, seed=3)
    res = pot.compute(atoms)
    with jax.enable_x64(True):
        for neighbor_list in ("jat", "jax_md") if _has_jax_md() else ("jat",):
            system = jat.md.jax_md_system(pot, atoms, neighbor_list=neighbor_list)
            assert system.box is None
            energy, forces, _ = _energy_forces(system)
            assert energy == pytest.approx(res.energy, rel=1e-10, abs=1e-10)
            np.testing.assert_allclose(forces, res.forces, atol=1e-10)


def test_jat_neighbor_list_updates_inside_jit():
    pot = potential("jat")
    atoms = _orthorhombic()
    with jax.enable_x64(True):
        system = jat.md.jax_md_system(pot, atoms, neighbor_list="jat", skin=0.4)
        R0 = jnp.asarray(system.positions)
        nbrs = system.neighbor_fn.allocate(R0)
        update = jax.jit(lambda R, nbrs: nbrs.update(R))
        small = R0.at[5].add(jnp.array([0.19, 0.0, 0.0]))  # < skin/2: kept
        kept = update(small, nbrs)
        np.testing.assert_array_equal(np.asarray(kept.reference), np.asarray(R0))
        big = R0.at[5].add(jnp.array([0.0, 0.25, 0.0]))  # > skin/2: rebuilt
        rebuilt = update(big, nbrs)
        np.testing.assert_array_equal(np.asarray(rebuilt.reference), np.asarray(big))
        for R, nb in ((small, kept), (big, rebuilt)):
            moved = atoms.copy()
            moved.positions = np.asarray(R)
            res = pot.compute(moved)
            energy = float(jax.jit(system.energy_fn)(R, neighbor=nb))
            assert energy == pytest.approx(res.energy, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("neighbor_list", ["jax_md", "jat"])
def test_jitted_nve_loop(neighbor_list):
    jax_md = pytest.importorskip("jax_md")
    from jax_md import quantity, simulate

    assert jax_md is not None
    pot = potential("jat")
    atoms = _triclinic()
    with jax.enable_x64(True):
        system = jat.md.jax_md_system(pot, atoms, neighbor_list=neighbor_list)
        R = jnp.asarray(system.positions)
        nbrs = system.neighbor_fn.allocate(R)
        init, apply = simulate.nve(system.energy_fn, system.shift_fn, dt=0.5 * units.fs)
        state = init(
            jax.random.PRNGKey(0), R, kT=300 * units.kB, mass=jnp.asarray(system.masses),
            neighbor=nbrs,
        )

        def total(state, nbrs):
            kinetic = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
            return system.energy_fn(state.position, neighbor=nbrs) + kinetic

        chunk = jat.md.make_chunk(apply, 10, observe=total)
        e0 = float(total(state, nbrs))
        state, nbrs, e1_traced, again = jat.md.run_chunk(chunk, state, nbrs, system.neighbor_fn)
        assert again == 0
        assert not bool(nbrs.did_buffer_overflow)
        assert state.position.dtype == jnp.float64
        e1 = float(total(state, nbrs))
        moved = np.abs(np.asarray(state.position - R)).max()
    assert e1 == pytest.approx(float(e1_traced), rel=1e-12)
    assert moved > 1e-3
    assert abs(e1 - e0) < 1e-3


def test_model_edges_compacted_and_overflow_flagged():
    """The model runs on the edges within the cutoff, compacted into ``nbrs.capacity`` slots;
    too few slots give NaN energy and forces and a raised overflow flag, never a silent drop,
    and ``run_chunk`` re-allocates and redoes the chunk."""
    simulate = pytest.importorskip("jax_md.simulate")
    pot = potential("jat")
    atoms = _orthorhombic()
    with jax.enable_x64(True):
        system = jat.md.jax_md_system(pot, atoms, neighbor_list="jat")
        R = jnp.asarray(system.positions)
        good = system.neighbor_fn.allocate(R)
        within = int(jnp.sum(good.mask & (jnp.linalg.norm(
            R[good.senders] - R[good.receivers] + good.shifts @ system.box.T, axis=-1
        ) < pot.cutoff)))
        assert within <= good.capacity < int(good.mask.sum())  # fewer slots than listed pairs
        small = dataclasses.replace(good, capacity=within - 20)  # pairs near the cutoff move
        energy, grad = jax.value_and_grad(system.energy_fn)(R, neighbor=small)
        assert np.isnan(float(energy)) and np.isnan(np.asarray(grad)).all()
        assert bool(small.update(R).did_buffer_overflow)
        assert not bool(good.update(R).did_buffer_overflow)

        init, apply = simulate.nve(system.energy_fn, system.shift_fn, dt=0.5 * units.fs)
        state = init(jax.random.PRNGKey(0), R, kT=300 * units.kB,
                     mass=jnp.asarray(system.masses), neighbor=good)
        chunk = jat.md.make_chunk(apply, 5)
        ref, _, _, again = jat.md.run_chunk(chunk, state, good, system.neighbor_fn)
        assert again == 0
        out, nbrs, _, again = jat.md.run_chunk(chunk, state, small, system.neighbor_fn)
        assert again == 1 and nbrs.capacity >= within
        np.testing.assert_allclose(np.asarray(out.position), np.asarray(ref.position), atol=1e-12)


def test_jax_md_lists_compare_inside_jit():
    """Regression: ``simulate.nve``'s ``init_fn`` is jitted and calls ``jax.eval_shape(energy_fn,
    R, neighbor=nbrs)``; JAX then compares the list's static metadata, inside that trace, with
    the lists of earlier calls of the same energy function with the same shapes (here the
    fractional list, in the suite another test's). A fractional list used to keep its cell size
    as a jax array, and the comparison raised "Exception raised while checking equality of
    metadata fields of pytree"."""
    pytest.importorskip("jax_md")
    pot = potential("jat")
    atoms = _triclinic()
    lists = []
    with jax.enable_x64(True):
        for fractional in (True, False):  # the fractional list first, as in the test order
            system = jat.md.jax_md_system(pot, atoms, fractional=fractional)
            R = jnp.asarray(system.positions)
            nbrs = system.neighbor_fn.allocate(R)

            @jax.jit
            def traced(R, nbrs, energy_fn=system.energy_fn):
                assert jax.eval_shape(energy_fn, R, neighbor=nbrs).shape == ()
                return nbrs.update(R)

            lists += [nbrs, traced(R, nbrs), system.neighbor_fn.update(R, nbrs)]
    # same shapes, so JAX's caches did compare the fractional and the Cartesian list's metadata
    assert lists[0].idx.shape == lists[3].idx.shape
    for nbrs in lists:  # plain Python numbers in the static fields
        assert type(nbrs.cell_size) is float
        assert type(nbrs.max_occupancy) is int
        assert nbrs.cell_list_capacity is None or type(nbrs.cell_list_capacity) is int


def test_errors():
    pot = potential("jat")
    small = random_crystal(8, seed=4)  # cell ~5 Å: minimum image impossible at 3.5 + 0.5 Å
    if _has_jax_md():
        with pytest.raises(ValueError, match="neighbor_list='jat'"):
            jat.md.jax_md_system(pot, small)
    with jax.enable_x64(True):  # the jat list handles small cells
        system = jat.md.jax_md_system(pot, small, neighbor_list="jat")
        energy, forces, _ = _energy_forces(system)
    res = pot.compute(small)
    assert energy == pytest.approx(res.energy, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(forces, res.forces, atol=1e-10)

    system = jat.md.jax_md_system(pot, _orthorhombic(), neighbor_list="jat")
    nbrs = system.neighbor_fn.allocate(jnp.asarray(system.positions, jnp.float32))
    with pytest.raises(RuntimeError, match="x64"):  # float64 potential, x64 off
        system.energy_fn(jnp.asarray(system.positions, jnp.float32), neighbor=nbrs)
    with pytest.raises(ValueError, match="trained on|does not know"):
        bad = _orthorhombic()
        bad.numbers[0] = 17
        jat.md.jax_md_system(pot, bad)
    with pytest.raises(ValueError, match="neighbor_list"):
        jat.md.jax_md_energy_fn(pot, ["H"], None, neighbor_list="vesin")
    with pytest.raises(ValueError, match="fractional"):
        jat.md.jax_md_energy_fn(pot, ["H"], np.eye(3) * 20, fractional=True, neighbor_list="jat")


def test_float32_potential_runs_without_x64():
    pot = potential("jat", "float32")
    atoms = _orthorhombic()
    system = jat.md.jax_md_system(pot, atoms, neighbor_list="jat")
    energy, forces, _ = _energy_forces(system)
    res = pot.compute(atoms)
    assert energy == pytest.approx(res.energy, rel=1e-5, abs=1e-4)
    np.testing.assert_allclose(forces, res.forces, atol=1e-4)


def _has_jax_md() -> bool:
    try:
        import jax_md  # noqa: F401
    except ImportError:
        return False
    return True
