"""Every model × every evaluation path gives the same energy, per-atom energies and forces.

Paths: ``Potential.compute``, ``Potential.compute_batch``, the ASE calculator, JAX-MD with jat's
and with jax-md's neighbour list, and the training step's prediction (a bucketed, padded batch).
They share the graph type, the edge-vector formula and the predictor, so they must agree to
floating-point rounding; here in float64, to 1e-6 relative.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from conftest import SPECIES, random_molecule

import jat
import jat.md
from jat.data import Structure
from jat.predictor import composition_energy
from jat.training import steps
from jat.training.dataset import build_dataset

CUTOFF = 3.5
# jax-md's own neighbour list warns about an int64 -> int32 scatter under x64.
pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types")
RTOL = 1e-6
MODELS = {
    "jat": {"width": 16, "layers": 2, "heads": 2},
    "schnet": {"features": 16, "interactions": 2},
    "bessel": {"n_max": 2, "widths": (16, 8)},
    "painn": {"features": 16, "interactions": 2, "num_rbf": 8},
}
# a wide covalent rule, so that the ZBL term is not zero on these structures
ZBL = {"kind": "zbl", "radius_scale": 2.0}


@functools.cache
def _potential(model: str, repulsion: bool) -> jat.Potential:
    pot = jat.Potential.create(model, SPECIES, CUTOFF, seed=3, dtype="float64", **MODELS[model])
    rng = np.random.default_rng(7)
    pot = pot.with_energy_reference(  # a non-trivial reference: the paths must all add it
        shift=rng.normal(-5.0, 2.0, len(SPECIES)), scale=rng.uniform(0.5, 2.0, len(SPECIES))
    )
    return pot.with_repulsion(ZBL) if repulsion else pot


def _crystal() -> Atoms:
    """40 atoms in a 9 × 10 × 11 Å box: large enough for jax-md's minimum image at 3.5 + 0.5 Å."""
    rng = np.random.default_rng(3)
    while True:
        atoms = Atoms(
            list(rng.choice(SPECIES, 40)),
            scaled_positions=rng.uniform(size=(40, 3)),
            cell=np.diag([9.0, 10.0, 11.0]),
            pbc=True,
        )
        if atoms.get_all_distances(mic=True)[np.triu_indices(40, 1)].min() > 0.9:
            return atoms


STRUCTURES = {"crystal": _crystal, "molecule": lambda: random_molecule(12, seed=5, box=5.0)}


def _jax_md(pot, atoms, neighbor_list):
    with jax.enable_x64(True):
        system = jat.md.jax_md_system(pot, atoms, neighbor_list=neighbor_list)
        R = jnp.asarray(system.positions)
        nbrs = system.neighbor_fn.allocate(R)
        energy, grad = jax.jit(jax.value_and_grad(system.energy_fn))(R, neighbor=nbrs)
        per_atom = jax.jit(jat.md.jax_md_energy_fn(
            pot, atoms.get_chemical_symbols(), system.box, neighbor_list=neighbor_list,
            per_atom=True,
        ).energy_fn)(R, neighbor=nbrs)
    return float(energy), np.asarray(per_atom), -np.asarray(grad) @ system.rotation


def _training(pot, atoms):
    s = Structure(
        symbols=tuple(atoms.get_chemical_symbols()),
        positions=atoms.get_positions(),
        cell=atoms.cell.array,
        pbc=tuple(bool(p) for p in atoms.pbc),
    )
    data = build_dataset([s], pot.species, pot.cutoff, pot.energy_shift, [len(atoms) + 3])
    with jax.enable_x64(True):
        batch = data.buckets[0].batch(np.array([0]), 2, jnp.float64)  # one real, one fill row
        params = jax.tree.map(jnp.asarray, pot.params)
        predict = jax.jit(functools.partial(steps.predict, pot.energy_model, forces=True))
        energies, forces = predict(params, jnp.asarray(pot.energy_scale), batch)
    species = np.array([pot.species.index(x) for x in s.symbols])
    energy = float(energies[0]) + composition_energy(pot.energy_shift, species)
    return energy, None, np.asarray(forces)[: len(atoms)]


@pytest.mark.compile_group("paths-{model}")
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("repulsion", [False, True], ids=["plain", "zbl"])
@pytest.mark.parametrize("model", MODELS)
def test_every_path_agrees(model, repulsion, structure):
    pot = _potential(model, repulsion)
    atoms = STRUCTURES[structure]()
    ref = pot.compute(atoms)
    if repulsion:  # the term takes part
        assert not np.isclose(ref.energy, _potential(model, False).compute(atoms).energy)

    paths = {}
    other = atoms.copy()
    other.positions[0] += 0.05
    batch = pot.compute_batch([other, atoms])[1]  # second structure: padded, offset
    paths["compute_batch"] = (batch.energy, batch.energies, batch.forces)
    calc = pot.calculator()
    atoms_calc = atoms.copy()
    atoms_calc.calc = calc
    paths["ase"] = (
        atoms_calc.get_potential_energy(),
        atoms_calc.get_potential_energies(),
        atoms_calc.get_forces(),
    )
    paths["jax_md-jat"] = _jax_md(pot, atoms, "jat")
    pytest.importorskip("jax_md")
    paths["jax_md-jax_md"] = _jax_md(pot, atoms, "jax_md")
    paths["training"] = _training(pot, atoms)

    scale_e = max(abs(ref.energy), 1.0)
    scale_f = max(np.abs(ref.forces).max(), 1.0)
    for name, (energy, energies, forces) in paths.items():
        assert energy == pytest.approx(ref.energy, rel=RTOL, abs=RTOL * scale_e), name
        if energies is not None:
            np.testing.assert_allclose(energies, ref.energies, rtol=RTOL, atol=RTOL * scale_e,
                                       err_msg=name)
        np.testing.assert_allclose(forces, ref.forces, rtol=RTOL, atol=RTOL * scale_f,
                                   err_msg=name)
