"""Shallow ensembles: ``model.ensemble: {kind: shallow, members: K}``, one shared representation
with K readout heads.

Every head is exactly the single-head model with that head's last layer, in every evaluation
path (``compute``, ``compute_batch``, the ASE calculator, JAX-MD): the predictions are the heads'
mean and σ their standard deviation, the per-head forces are the derivatives of each head's
energy (finite differences), σ is invariant under rotation and padding, calibration and the
saved files keep the kind, and a short training run with the NLL improves it.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.io import write
from conftest import SPECIES, emt_labelled, random_crystal, random_molecule

import jat
import jat.md
from jat.config import ConfigError, config_from_dict
from jat.evaluation import evaluate, fit_calibration
from jat.potential.files import PotentialFileError
from jat.training import train
from jat.uncertainty import Calibration, spread

pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types")
CUTOFF = 3.5
K = 3
SMALL = {"features": 8, "interactions": 1}
SMALL_ITEMS = tuple(SMALL.items())
LAST = {"jat": ("readout",), "schnet": ("readout_2",), "painn": ("readout_2",),
        "bessel": ("outlet",)}


def _last_layer(params, model):
    """The last readout layer's parameters (a dict) of a model's parameters."""
    layer = params["params"]
    for name in LAST[model]:
        layer = layer[name]
    if model == "jat":  # ReadoutMLP: Dense_0 … Dense_n, the last one is the output layer
        dense = sorted((k for k in layer if k.startswith("Dense_")), key=lambda k: int(k[6:]))
        layer = layer[dense[-1]]
    return layer


@functools.cache
def _shallow(model: str = "schnet", kwargs: tuple = SMALL_ITEMS) -> jat.Potential:
    rng = np.random.default_rng(3)
    pot = jat.Potential.create(model, SPECIES, CUTOFF, seed=1, dtype="float64", members=K,
                               ensemble="shallow", **dict(kwargs))
    return pot.with_energy_reference(
        shift=rng.normal(-3.0, 1.0, len(SPECIES)), scale=rng.uniform(0.5, 2.0, len(SPECIES))
    )


def _head(pot: jat.Potential, k: int, model: str = "schnet", kwargs=SMALL_ITEMS):
    """Head ``k`` as a single-head potential: the shared parameters, and column k of the last
    layer."""
    single = jat.Potential.create(model, pot.species, pot.cutoff, dtype=pot.dtype,
                                  **dict(kwargs))
    params = jax.tree.map(np.asarray, pot.params)
    layer = _last_layer(params, model)
    layer["kernel"] = layer["kernel"][:, k : k + 1]
    layer["bias"] = layer["bias"][k : k + 1]
    return single.with_params(params).with_energy_reference(pot.energy_shift, pot.energy_scale)


def _crystal():
    return random_crystal(10, seed=4, length=8.0)


def test_one_head_keeps_the_parameters_and_the_results():
    plain = jat.Potential.create("schnet", SPECIES, CUTOFF, seed=2, **SMALL)
    assert plain.ensemble is None and plain.members is None
    assert plain.params["params"]["readout_2"]["kernel"].shape[-1] == 1
    assert "readout_heads" not in plain.model_kwargs  # nor in saved files
    one = jat.Potential.create("schnet", SPECIES, CUTOFF, seed=2, ensemble="shallow", **SMALL)
    for x, y in zip(jax.tree.leaves(plain.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    atoms = random_molecule(8, seed=1)
    assert plain.compute(atoms).energy == one.compute(atoms).energy
    for name in LAST:
        pot = jat.Potential.create(name, SPECIES, CUTOFF, seed=0)
        layer = _last_layer(pot.params, name)
        assert layer["kernel"].shape[-1] == 1, name


@pytest.mark.compile_group("shallow")
@pytest.mark.parametrize("model,kwargs", [
    ("schnet", SMALL),
    ("jat", {"width": 8, "layers": 1, "heads": 1, "readout": (8,)}),
    ("painn", {"features": 8, "interactions": 1, "dipole_head": True}),
    ("bessel", {"widths": (8, 8)}),
])
def test_every_head_is_the_single_head_model(model, kwargs):
    kw = tuple(kwargs.items())
    pot = _shallow(model, kw)
    assert pot.ensemble == "shallow" and pot.n_members == K and not pot.stacked
    atoms = _crystal()
    r = pot.compute(atoms, members=True)
    heads = [_head(pot, k, model, kw).compute(atoms) for k in range(K)]
    for key in ("energy", "energies", "forces", "stress"):
        values = np.array([getattr(h, key) for h in heads])
        mean, std = spread(values)
        np.testing.assert_allclose(getattr(r, key), mean, rtol=1e-9, atol=1e-10, err_msg=key)
        np.testing.assert_allclose(getattr(r, f"{key}_std"), std, rtol=1e-7, atol=1e-10,
                                   err_msg=key)
        assert np.all(np.asarray(getattr(r, f"{key}_std")) >= 0)
        np.testing.assert_allclose(getattr(r.members, key), values, rtol=1e-9, atol=1e-10)
    assert r.energy_std > 0 and r.forces_std.shape == (len(atoms), 3)
    assert r.stress_std.shape == (3, 3) and r.energies_std.shape == (len(atoms),)
    assert r.members.forces.shape == (K, len(atoms), 3)


@pytest.mark.compile_group("shallow")
def test_head_forces_are_finite_differences_of_head_energies():
    pot = _shallow()
    atoms = random_molecule(6, seed=5)
    r = pot.compute(atoms, members=True)
    h = 1e-5
    for i, c in [(0, 0), (2, 1), (5, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, c] += h
        minus.positions[i, c] -= h
        ep = pot.compute(plus, forces=False, members=True).members.energy
        em = pot.compute(minus, forces=False, members=True).members.energy
        fd = -(ep - em) / (2 * h)  # (K,) every head's force component
        np.testing.assert_allclose(r.members.forces[:, i, c], fd, rtol=1e-6, atol=1e-8)
        assert r.forces_std[i, c] == pytest.approx(np.std(fd), rel=1e-5, abs=1e-9)


@pytest.mark.compile_group("shallow")
def test_sigma_is_invariant_under_rotation_and_padding():
    pot = _shallow()
    atoms = random_molecule(8, seed=3)
    r = pot.compute(atoms)
    rot = atoms.copy()
    rot.rotate(37, (1, 2, 0.5), center="COM")
    rr = pot.compute(rot)
    assert rr.energy_std == pytest.approx(r.energy_std, rel=1e-9)
    np.testing.assert_allclose(rr.energies_std, r.energies_std, rtol=1e-8, atol=1e-12)
    # per component σ depends on the frame; its per-atom norm does not
    np.testing.assert_allclose(np.linalg.norm(rr.forces_std, axis=1),
                               np.linalg.norm(r.forces_std, axis=1), rtol=1e-7, atol=1e-12)
    other = random_molecule(11, seed=8)
    batch = pot.compute_batch([atoms, other])  # padded to 16 atom slots
    assert batch[0].energy_std == pytest.approx(r.energy_std, rel=1e-9)
    np.testing.assert_allclose(batch[0].forces_std, r.forces_std, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(batch[1].forces_std, pot.compute(other).forces_std,
                               rtol=1e-8, atol=1e-12)


@pytest.mark.compile_group("shallow")
def test_calculator_and_jax_md_give_the_same_mean_and_std():
    pot = _shallow()
    atoms = _crystal()
    ref = pot.compute(atoms)
    a = atoms.copy()
    a.calc = pot.calculator(members=True)
    a.get_potential_energy()
    res = a.calc.results
    assert res["energy"] == pytest.approx(ref.energy, rel=1e-9)
    assert res["energy_std"] == pytest.approx(ref.energy_std, rel=1e-9)
    np.testing.assert_allclose(res["forces_std"], ref.forces_std, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res["energies_std"], ref.energies_std, rtol=1e-8, atol=1e-10)
    assert res["stress_std"].shape == (6,) and np.all(res["stress_std"] >= 0)
    assert res["forces_members"].shape == (K, len(atoms), 3)
    assert res["energy_members"].shape == (K,)
    with jax.enable_x64(True):
        system = jat.md.jax_md_system(pot, atoms, neighbor_list="jat")
        R = jnp.asarray(system.positions)
        nbrs = system.neighbor_fn.allocate(R)
        energy = jax.jit(system.energy_fn)(R, neighbor=nbrs)
        u = jax.jit(system.uncertainty_fn)(R, neighbor=nbrs)
    assert float(energy) == pytest.approx(ref.energy, rel=1e-9)
    assert float(u["energy_std"]) == pytest.approx(ref.energy_std, rel=1e-7)
    np.testing.assert_allclose(np.asarray(u["atom_force_std"]),
                               np.linalg.norm(ref.forces_std, axis=1), rtol=1e-6)


def test_save_load_calibration_and_refusals(tmp_path):
    pot = _shallow().with_calibration(Calibration(energy=2.0, forces=3.0, method="nll"))
    path = pot.save(tmp_path / "shallow")
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["ensemble"] == "shallow" and meta["members"] == K
    assert meta["model_kwargs"]["readout_heads"] == K
    loaded = jat.Potential.load(path)
    assert loaded.ensemble == "shallow" and loaded.calibration.forces == 3.0
    atoms = random_molecule(7, seed=2)
    a, b = pot.compute(atoms), loaded.compute(atoms)
    np.testing.assert_allclose(b.forces_std, a.forces_std, rtol=1e-12)
    raw = loaded.compute(atoms, calibrated=False)
    np.testing.assert_allclose(b.forces_std, 3.0 * raw.forces_std, rtol=1e-12)
    assert b.energy_std == pytest.approx(2.0 * raw.energy_std, rel=1e-12)
    # a file whose kind does not match its heads names the field
    meta["ensemble"] = "deep"
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(PotentialFileError, match="ensemble"):
        jat.Potential.load(path)
    with pytest.raises(ValueError, match="shallow ensemble is not a potential of its own"):
        pot.member(0)
    with pytest.raises(ValueError, match="committee of shallow ensembles"):
        jat.Potential.committee([pot, pot])
    with pytest.raises(ValueError, match="readout_heads is set by"):
        jat.Potential.create("schnet", SPECIES, CUTOFF, readout_heads=2)
    with pytest.raises(ValueError, match="ensemble must be"):
        jat.Potential.create("schnet", SPECIES, CUTOFF, members=2, ensemble="wide")


# ---------------------------------------------------------------------------------------------
# training


TINY = {"name": "jat", "cutoff": 3.0, "layers": 1, "width": 8, "heads": 1, "readout": [8]}


@pytest.fixture(scope="module")
def cu_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cu")
    paths = []
    for name, seeds in (("train", range(16)), ("val", range(100, 108))):
        frames = []
        for k in seeds:
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
            atoms.rattle(0.1, seed=k)
            frames.append(emt_labelled(atoms))
        write(root / f"{name}.extxyz", frames)
        paths.append(root / f"{name}.extxyz")
    return paths


def _config(paths, tmp_path, ensemble, loss=None, **training):
    return config_from_dict({
        "name": "t",
        "run_dir": str(tmp_path / "run"),
        "data": {"train": str(paths[0]), "validation": str(paths[1])},
        "model": {**TINY, "ensemble": ensemble},
        "loss": {"energy_weight": 0.1, **(loss or {})},
        "training": {"epochs": 8, "batch_size": 4, **training},
        "optimizer": {"clip_norm": 1.0, "lr_max": 3e-3, "ema_decay": None},
        "logging": {"progress": "none"},
    })


def test_shallow_run_improves_the_nll_saves_and_calibrates(cu_files, tmp_path):
    cfg = _config(cu_files, tmp_path, {"kind": "shallow", "members": 4})
    result = train(cfg)
    pot = result.potential
    assert pot.ensemble == "shallow" and pot.members == 4
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text()
            .splitlines()]
    nll = [row["val_forces_nll"] for row in rows if "val_forces_nll" in row]
    assert len(nll) >= 2 and nll[-1] < nll[0], nll
    loaded = jat.Potential.load(result.run_dir)
    assert loaded.ensemble == "shallow"
    structures = list(jat.data.read_structures([str(cu_files[1])]))
    ev = evaluate(loaded, structures, calibrated=False)
    calibration = fit_calibration(ev, fitted_on="val")
    assert calibration.forces > 0 and calibration.method == "nll"
    out = tmp_path / "calibrated"
    from jat.evaluate import main

    assert main([str(result.run_dir), str(cu_files[1]), "--calibrate", str(out),
                 "--no-plots", "--out", str(tmp_path / "ev")]) == 0
    assert jat.Potential.load(out).calibration.forces == pytest.approx(calibration.forces)


def test_crps_step_is_finite_and_differs_from_nll(cu_files, tmp_path):
    result = train(_config(cu_files, tmp_path, {"kind": "shallow", "members": 2},
                           loss={"ensemble": "crps"}, epochs=2))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text()
            .splitlines()]
    assert all(np.isfinite(row["train_loss"]) for row in rows)
    assert "val_forces_crps" in rows[-1] and "val_forces_nll" not in rows[-1]


def test_shallow_config_is_checked(cu_files, tmp_path):
    with pytest.raises(ConfigError, match="bootstrap needs kind: deep"):
        _config(cu_files, tmp_path, {"kind": "shallow", "members": 2, "bootstrap": True})
    with pytest.raises(ConfigError, match="kfold"):
        config_from_dict({
            "data": {"train": str(cu_files[0]), "split": {"kfold": 3}},
            "model": {**TINY, "ensemble": {"kind": "shallow", "members": 2}},
        })
    with pytest.raises(ConfigError, match="loss.ensemble"):
        _config(cu_files, tmp_path, {"kind": "shallow", "members": 2},
                loss={"ensemble": "mse"})
    with pytest.raises(ConfigError, match="readout_heads"):
        config_from_dict({"model": {**TINY, "readout_heads": 2}})
    one = _config(cu_files, tmp_path, {"kind": "shallow", "members": 1})
    assert one.model.ensemble.kind == "shallow"


@pytest.mark.compile_group("shallow")
def test_forces_std_false_gives_the_mean_forces_from_one_backward_pass():
    pot = _shallow()
    atoms = _crystal()
    full = pot.compute(atoms, members=True)
    cheap = pot.compute(atoms, forces_std=False, members=True)
    np.testing.assert_allclose(cheap.forces, full.forces, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(cheap.stress, full.stress, rtol=1e-9, atol=1e-12)
    assert cheap.energy_std == pytest.approx(full.energy_std, rel=1e-12)
    assert cheap.forces_std is None and cheap.stress_std is None
    assert cheap.members.forces is None and cheap.members.energy.shape == (K,)
    batch = pot.compute_batch([atoms, random_crystal(7, seed=9, length=8.0)],
                              forces_std=False)
    np.testing.assert_allclose(batch[0].forces, full.forces, rtol=1e-9, atol=1e-10)
    a = atoms.copy()
    a.calc = pot.calculator(forces_std=False, members=True)
    a.get_potential_energy()
    res = a.calc.results
    assert "forces_std" not in res and "stress_std" not in res and "forces_members" not in res
    np.testing.assert_allclose(res["forces"], full.forces, rtol=1e-9, atol=1e-10)
    assert res["energy_std"] == pytest.approx(full.energy_std, rel=1e-9)
    with pytest.raises(ValueError, match="guard needs the force"):
        pot.calculator(forces_std=False, guard=1.0)
    deep = jat.Potential.create("schnet", SPECIES, CUTOFF, members=2, dtype="float64", **SMALL)
    d_full, d_cheap = deep.compute(atoms), deep.compute(atoms, forces_std=False)
    np.testing.assert_allclose(d_cheap.forces, d_full.forces, rtol=1e-9, atol=1e-10)
    assert d_cheap.forces_std is None
