"""Training a deep committee in one run: ``model.ensemble: {kind: deep, members: K}``.

The committee step is K independent training steps at once (each member its own optimiser
state, clipping and finiteness), the run saves one committee potential whose σ comes from its
members, bootstrap weights resample the training set per member, and a committee run resumes
exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from conftest import emt_labelled, rattled_copper_file

import jat
from jat.config import ConfigError, config_from_dict
from jat.training import optim, steps, train
from jat.training.dataset import build_dataset

TINY = {"name": "jat", "cutoff": 3.0, "layers": 1, "width": 8, "heads": 1}


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory):
    return rattled_copper_file(tmp_path_factory.mktemp("cu"), 16)


def _config(path, tmp_path, ensemble, **training):
    return config_from_dict({
        "name": "t",
        "run_dir": str(tmp_path / "run"),
        "data": {"train": str(path), "split": {"validation": 4}},
        "model": {**TINY, "ensemble": ensemble},
        "training": {"epochs": 3, "batch_size": 4, **training},
        "optimizer": {"clip_norm": 1.0},
        "logging": {"progress": "none"},
    })


def test_committee_step_is_k_independent_steps(x64):
    pot = jat.Potential.create("jat", ["Cu"], 3.0, seed=0, dtype="float64", members=3,
                               width=8, layers=1, heads=1)
    frames = []
    for k in range(4):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=k)
        frames.append(emt_labelled(atoms))
    structures = [
        jat.data.Structure(tuple(a.get_chemical_symbols()), a.positions, a.cell.array,
                           (True,) * 3, a.get_potential_energy(), a.get_forces())
        for a in frames
    ]
    data = build_dataset(structures, ("Cu",), 3.0, np.zeros(1), [4])
    batch = data.buckets[0].batch(np.arange(3), 4, jnp.float64)
    tx = optim.optimizer("adam", 0.0, 0.5)
    spec = steps.LossSpec(energy_weight=0.1)
    scale = jnp.ones(1)
    params = jax.tree.map(jnp.asarray, pot.params)
    weights = jnp.asarray([[1.0, 1.0, 1.0, 0.0], [2.0, 0.0, 1.0, 0.0], [0.0, 1.0, 3.0, 0.0]])
    state = steps.initial_state(params, tx, committee=True)
    committee_step = jax.jit(functools.partial(
        steps.committee_train_step, pot.energy_model, tx, spec, 0.99
    ))
    single_step = jax.jit(functools.partial(steps.train_step, pot.energy_model, tx, spec, 0.99))
    new, metrics = committee_step(state, scale, batch, 1e-3, weights)
    assert bool(metrics["finite"])
    total = 0.0
    for k in range(3):
        one = steps.initial_state(jax.tree.map(lambda x, k=k: x[k], params), tx)
        b = steps.reweighted(batch, weights[k])
        ref, m = single_step(one, scale, b, 1e-3)
        total += float(m["loss"])
        for x, y in zip(jax.tree.leaves(ref), jax.tree.leaves(jax.tree.map(
                lambda x, k=k: x[k], new)), strict=True):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-10, atol=1e-14)
    assert float(metrics["loss"]) == pytest.approx(total, rel=1e-10)


def test_committee_run_trains_saves_and_resumes(cu_file, tmp_path):
    ensemble = {"kind": "deep", "members": 3, "bootstrap": True}
    result = train(_config(cu_file, tmp_path / "a", ensemble))
    pot = result.potential
    assert pot.members == 3
    loaded = jat.Potential.load(result.run_dir)
    assert loaded.members == 3
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.1, seed=99)
    r = loaded.compute(atoms, members=True)
    assert r.energy_std > 0 and r.forces_std.max() > 0
    assert not np.allclose(r.members.forces[0], r.members.forces[1])
    assert np.isfinite(result.summary["validation"]["forces_mae"])
    stats = loaded.label_statistics  # the training labels' distribution, for z-scores
    assert stats is not None and stats.structures == 12 and stats.force_std > 0
    assert r.forces_z is not None and r.energy_z is not None

    class Stop(BaseException):
        pass

    def crash(epoch, step, state):
        if epoch == 2 and step == 1:
            raise Stop

    cfg = _config(cu_file, tmp_path / "b", ensemble)
    with pytest.raises(Stop):
        train(cfg, hooks={"after_step": crash})
    resumed = jat.training.resume(tmp_path / "b" / "run")
    for x, y in zip(jax.tree.leaves(pot.params), jax.tree.leaves(resumed.potential.params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-8)


def test_ensemble_config_is_checked(cu_file, tmp_path):
    with pytest.raises(ConfigError, match="members"):
        _config(cu_file, tmp_path, {"members": 0})
    with pytest.raises(ConfigError, match="kind"):
        _config(cu_file, tmp_path, {"kind": "wide", "members": 2})
    with pytest.raises(ConfigError, match="ensemble"):
        _config(cu_file, tmp_path, {"size": 2})
    single = _config(cu_file, tmp_path, {"members": 1})
    assert single.model.ensemble.members == 1
