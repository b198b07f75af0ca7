"""``jat.models.PaiNN``: symmetries, derivatives, padding, smoothness at the cutoff, the
equivariant dipole head, hyperparameters, the configuration, save/load and a short training run,
with random parameters (small widths)."""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from conftest import (
    CUTOFF,
    SMALL,
    SPECIES,
    potential,
    random_crystal,
    random_molecule,
    random_rotation,
)
from test_models import (
    INVARIANCE_CASES,
    RTOL,
    TRANSFORMS,
    _cluster_and_probe,
    _graph,
    _padded,
    assert_close,
    assert_results_close,
    check_smooth_cutoff,
    numerical_forces,
    numerical_stress,
)

import jat
from jat.config import config_from_dict, load_config, template
from jat.dtypes import precision
from jat.models import MODELS, HyperparameterError, PaiNN
from jat.models.blocks import edge_lengths, half_edges, swish
from jat.models.painn import PaiNNMessage, unit_vectors, vector_norm
from jat.predictor import predict
from jat.training import train

SMALL_PAINN = dict(SMALL["painn"])
CASES = [case for case in INVARIANCE_CASES if case[0] != "ean"]


def _atoms(system):
    return random_molecule(9, seed=3) if system == "molecule" else random_crystal(8, seed=4)


def test_registered_with_paper_defaults():
    assert MODELS["painn"] is PaiNN
    module = PaiNN(num_species=4, cutoff=5.0)
    got = (module.features, module.interactions, module.num_rbf)
    assert got == (128, 3, 20)
    assert module.shared_filters is False and module.dipole_head is False


# ---------------------------------------------------------------------------------------------
# Invariances, derivatives


@pytest.mark.compile_group("painn-{system}")
@pytest.mark.parametrize(("system", "transform"), CASES)
def test_invariance(system, transform):
    pot = potential("painn")
    atoms = _atoms(system)
    ref = pot.compute(atoms)
    assert np.all(np.isfinite(ref.forces)) and np.ptp(ref.energies) > 0
    rng = np.random.default_rng(zlib.crc32(f"{system}/{transform}".encode()))
    new_atoms, rot, perm = TRANSFORMS[transform](atoms.copy(), rng)
    assert_results_close(pot.compute(new_atoms), ref, RTOL["float64"], rot, perm)


@pytest.mark.compile_group("painn-{system}")
@pytest.mark.parametrize("system", ["molecule", "crystal"])
def test_forces_are_energy_gradient(system):
    atoms = _atoms(system)
    pot = potential("painn")
    res = pot.compute(atoms)
    assert np.max(np.abs(res.forces)) > 1e-3
    assert_close(res.forces, numerical_forces(pot, atoms), 1e-6, "forces")


@pytest.mark.compile_group("painn-crystal")
def test_stress_is_strain_derivative():
    atoms = random_crystal(8, seed=4)
    pot = potential("painn")
    stress = pot.compute(atoms).stress
    assert np.max(np.abs(stress)) > 1e-4
    assert_close(stress, stress.T, 1e-12, "symmetry")
    assert_close(stress, numerical_stress(pot, atoms), 1e-6, "stress")


def test_shared_filters_forces():
    pot = potential("painn", shared_filters=True)
    atoms = random_molecule(6, seed=8)
    assert_close(pot.compute(atoms).forces, numerical_forces(pot, atoms), 1e-6, "forces")
    n_default = sum(x.size for x in jax.tree.leaves(potential("painn").params))
    n_shared = sum(x.size for x in jax.tree.leaves(pot.params))
    assert n_shared < n_default


@pytest.mark.parametrize("shared_filters", [False, True])
def test_smooth_at_cutoff(shared_filters):
    check_smooth_cutoff(potential("painn", shared_filters=shared_filters))


def test_float32_finite_just_inside_cutoff():
    pot = potential("painn", "float32")
    for d in pot.cutoff * np.array([1e-2, 1e-3, 1e-4, 1e-5, 1e-6]):
        res = pot.compute(_cluster_and_probe(pot.cutoff - d))
        assert np.isfinite(res.energy) and np.all(np.isfinite(res.forces)), (d, res.forces)


# ---------------------------------------------------------------------------------------------
# The module directly: padding, safe norms


def _module(dipole_head=True):
    return PaiNN(num_species=len(SPECIES), cutoff=CUTOFF, dipole_head=dipole_head, **SMALL_PAINN)


@functools.cache
def _params(dipole_head=True):
    species, vec, senders, receivers = _graph(random_crystal(8, seed=4), CUTOFF)
    mask = np.ones(len(vec), bool)
    module = _module(dipole_head)
    return jax.jit(module.init)(jax.random.PRNGKey(0), species, vec, senders, receivers, mask)


@functools.cache
def _run(dipole_head=True):
    """Compiled outputs of the module and d(Σ energy + Σ charges + Σ dipoles)/d(edge vectors)."""
    module = _module(dipole_head)

    @jax.jit
    def run(params, species, vec, senders, receivers, mask):
        def total(v):
            out = module.apply(params, species, v, senders, receivers, mask)
            out = out if isinstance(out, dict) else {"energy": out}
            return sum(jnp.sum(x) for x in out.values()), out

        (_, out), grad = jax.value_and_grad(total, has_aux=True)(vec)
        return out, grad

    return run


def _apply(*graph, dipole_head=True):
    out, grad = _run(dipole_head)(_params(dipole_head), *map(jnp.asarray, graph))
    return {k: np.asarray(v) for k, v in out.items()}, np.asarray(grad)


@pytest.mark.parametrize("fill", [0.0, 1e6])
@pytest.mark.parametrize("target", ["outside", "padded_atom"])
def test_padding_changes_nothing(x64, fill, target):
    graph = _graph(random_crystal(8, seed=4), CUTOFF)
    n, e = len(graph[0]), len(graph[1])
    out, grad = _apply(*graph, np.ones(e, bool))
    padded = _padded(*graph, extra_atoms=5, extra_edges=11, fill=fill, target=target)
    out_pad, grad_pad = _apply(*padded)
    assert set(out) == {"energy", "charges", "atomic_dipoles"}
    assert np.all(np.isfinite(grad_pad))
    for key, value in out.items():
        assert np.all(np.isfinite(out_pad[key])), key
        assert_close(out_pad[key][:n], value, 1e-12, key)
        assert np.all(out_pad[key][n:] == 0.0), key
    assert_close(grad_pad[:e], grad, 1e-12, "gradients")
    assert np.all(grad_pad[e:] == 0.0)


def test_only_padding_and_isolated_atoms_are_finite(x64):
    """Padded atoms with masked zero-length edges: outputs 0, gradients 0. An isolated real atom
    (no edges, zero vector features): finite outputs and gradients."""
    zeros = np.zeros(6, np.int32)
    out, grad = _apply(np.full(4, -1, np.int32), np.zeros((6, 3)), zeros, zeros, np.zeros(6, bool))
    assert all(np.all(v == 0.0) for v in out.values()) and np.all(grad == 0.0)
    species = np.array([1, -1], np.int32)
    out, grad = _apply(species, np.zeros((6, 3)), zeros, zeros, np.zeros(6, bool))
    assert all(np.all(np.isfinite(v)) for v in out.values()) and np.all(grad == 0.0)
    assert np.all(out["atomic_dipoles"] == 0.0)  # no direction to point in


def test_message_block_equals_full_edge_sum(x64):
    """The pair-wise evaluation (filters once per pair, messages both ways with r̂_ji = −r̂_ij)
    equals the plain sum over every directed edge, periodic images included."""
    species, vec, senders, receivers = _graph(random_crystal(8, seed=4), CUTOFF)
    n, e, f = len(species), len(vec), 4
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.normal(size=(n, f)))
    v = jnp.asarray(rng.normal(size=(n, 3, f)))

    def filters(r):  # any function of |r_ij|, (E,) -> (E, 3F)
        return jnp.cos(r[:, None] * jnp.arange(1, 3 * f + 1))

    half = half_edges(jnp.asarray(vec), senders, receivers, np.ones(e, bool), n)
    r_half = edge_lengths(half.vectors, half.mask)
    unit = unit_vectors(half.vectors, r_half, half.mask)
    w = filters(r_half) * half.mask[:, None]
    block = PaiNNMessage(f)
    params = block.init(jax.random.PRNGKey(1), s, v, w, unit, half)
    ds, dv = block.apply(params, s, v, w, unit, half)

    p = params["params"]
    phi = swish(s @ p["phi_1"]["kernel"] + p["phi_1"]["bias"])
    phi = np.asarray(phi @ p["phi_2"]["kernel"] + p["phi_2"]["bias"])
    r = np.linalg.norm(vec, axis=1)
    x_s, x_vv, x_vs = np.split(phi[senders] * np.asarray(filters(jnp.asarray(r))), 3, axis=-1)
    msg = np.asarray(v)[senders] * x_vv[:, None] + x_vs[:, None] * (vec / r[:, None])[:, :, None]
    want_s, want_v = np.zeros((n, f)), np.zeros((n, 3, f))
    np.add.at(want_s, receivers, x_s)
    np.add.at(want_v, receivers, msg)
    assert_close(ds, want_s, 1e-12, "scalar messages")
    assert_close(dv, want_v, 1e-12, "vector messages")


def test_safe_norm_and_unit_vectors(x64):
    v = jnp.zeros((2, 3, 4))
    g = jax.grad(lambda x: jnp.sum(vector_norm(x)))(v)
    assert np.all(np.isfinite(g)) and np.all(g == 0.0)
    vec = jnp.array([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0], [1e6, 1e6, 1e6]])
    mask = jnp.array([True, True, False])
    r = jnp.sqrt(jnp.sum(jnp.where(mask[:, None], vec, 0.0) ** 2, axis=-1))
    unit = unit_vectors(vec, r, mask)
    np.testing.assert_allclose(unit, [[0.6, 0.0, 0.8], [0, 0, 0], [0, 0, 0]])
    g = jax.grad(lambda x: jnp.sum(unit_vectors(x, r, mask)))(vec)
    assert np.all(np.isfinite(g)) and np.all(g[1:] == 0.0)


# ---------------------------------------------------------------------------------------------
# The dipole head through the predictor


def test_plain_model_returns_energies_only(x64):
    species, vec, senders, receivers = _graph(random_molecule(5, seed=2), CUTOFF)
    out, _ = _apply(species, vec, senders, receivers, np.ones(len(vec), bool), dipole_head=False)
    assert set(out) == {"energy"} and out["energy"].shape == (5,)


@functools.cache
def _dipole_potential():
    return potential("painn", dipole_head=True)


@functools.cache
def _predictor(pot):
    return jax.jit(functools.partial(predict, pot.energy_model, forces=False))


def _extras(pot, atoms):
    """Total network energy (eV) and the extras of ``predict`` for one structure."""
    with precision(pot.dtype):
        params, scale = pot.device_constants()
        p = _predictor(pot)(params, scale, pot.graph(atoms))
        return float(jnp.sum(p.energies)), {k: np.asarray(v) for k, v in p.extras.items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_dipole_head_is_equivariant(seed):
    """Rotating (and translating, permuting) the molecule rotates the atomic dipoles; energies
    and charges are unchanged."""
    pot = _dipole_potential()
    atoms = random_molecule(9, seed=3)
    e_ref, ref = _extras(pot, atoms)
    assert ref["charges"].shape == (9,) and ref["atomic_dipoles"].shape == (9, 3)
    assert np.max(np.abs(ref["atomic_dipoles"])) > 1e-6  # not trivially zero
    rot = random_rotation(seed + 11)
    perm = np.random.default_rng(seed).permutation(len(atoms))
    moved = atoms[perm]
    moved.positions = moved.positions @ rot.T + [1.5, -2.0, 0.7]
    e_new, new = _extras(pot, moved)
    assert e_new == pytest.approx(e_ref, rel=1e-10)
    assert_close(new["charges"], ref["charges"][perm], 1e-10, "charges")
    assert_close(new["atomic_dipoles"], ref["atomic_dipoles"][perm] @ rot.T, 1e-10, "dipoles")
    # a reflection flips the (polar) dipoles too: they are vectors, not pseudovectors
    mirrored = atoms.copy()
    mirrored.positions = mirrored.positions * [-1.0, 1.0, 1.0]
    _, flip = _extras(pot, mirrored)
    assert_close(flip["atomic_dipoles"], ref["atomic_dipoles"] * [-1.0, 1.0, 1.0], 1e-10, "mirror")


def test_dipole_head_leaves_energy_paths_working():
    """With the dipole head, compute (energy, forces) still works: the extras are passed by."""
    pot = _dipole_potential()
    atoms = random_molecule(6, seed=8)
    res = pot.compute(atoms)
    assert_close(res.forces, numerical_forces(pot, atoms), 1e-6, "forces")


# ---------------------------------------------------------------------------------------------
# Hyperparameters, configuration, save and load


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"features": 1}, "features"),
        ({"features": 2.5}, "features"),
        ({"interactions": 0}, "interactions"),
        ({"interactions": 100}, "interactions"),
        ({"num_rbf": 0}, "num_rbf"),
        ({"num_rbf": True}, "num_rbf"),
        ({"shared_filters": 1}, "shared_filters"),
        ({"dipole_head": "yes"}, "dipole_head"),
        ({"num_species": 0}, "num_species"),
        ({"cutoff": -1.0}, "cutoff"),
    ],
)
def test_bad_hyperparameters_are_rejected(kwargs, key):
    args = {"num_species": 4, "cutoff": 5.0, **kwargs}
    with pytest.raises(HyperparameterError) as err:
        PaiNN(**args)
    assert err.value.key == key
    if key not in ("num_species", "cutoff"):
        with pytest.raises(HyperparameterError, match=key):
            jat.Potential.create("painn", SPECIES, 5.0, **kwargs)


def test_configuration_section():
    cfg = load_config(None, ["model.name=painn", "model.features=32", "model.dipole_head=true"])
    assert cfg.model.name == "painn"
    assert dict(cfg.model.hyper) == {"features": 32, "dipole_head": True}
    assert dict(load_config(None, ["model.name=painn"]).model.hyper) == {}
    with pytest.raises(ValueError, match="model.interactions"):
        load_config(None, ["model.name=painn", "model.interactions=0"])
    with pytest.raises(ValueError, match="not a hyperparameter of model 'painn'"):
        load_config(None, ["model.name=painn", "model.heads=2"])
    lines = template().splitlines()
    assert any(ln.startswith("  #   painn: ") for ln in lines)


def test_save_and_load(tmp_path):
    pot = potential("painn", shared_filters=True)
    atoms = random_molecule(7, seed=3)
    loaded = jat.Potential.load(pot.save(tmp_path / "painn"))
    assert loaded.model == "painn" and loaded.module == pot.module
    assert dict(loaded.model_kwargs) == {**SMALL_PAINN, "shared_filters": True}
    assert loaded.compute(atoms).energy == pytest.approx(pot.compute(atoms).energy, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.slow
def test_training_run(tmp_path):
    """``model.name: painn`` trains through the configuration (energy and forces, EMT labels)."""
    frames = []
    for k in range(12):
        atoms = molecule(("CH4", "NH3", "H2O")[k % 3])
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    write(tmp_path / "mol.extxyz", frames)
    cfg = config_from_dict(
        {
            "name": "painn",
            "run_dir": str(tmp_path / "run"),
            "data": {"train": str(tmp_path / "mol.extxyz"), "split": {"validation": 3}},
            "model": {"name": "painn", "cutoff": 3.0, "features": 8, "interactions": 1},
            "training": {"epochs": 3, "batch_size": 3},
            "logging": {"progress": "none"},
        }
    )
    result = train(cfg)
    assert np.isfinite(result.summary["validation"]["forces_mae"])
    pot = jat.Potential.load(result.run_dir)
    assert pot.model == "painn" and pot.module.features == 8
