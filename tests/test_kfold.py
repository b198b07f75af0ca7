"""k-fold cross-validation (``data.split.kfold``): the folds, the CV estimate, the committee of
the fold models, and resuming a cross-validation that stopped inside a fold."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from ase.build import bulk
from conftest import rattled_copper_file

import jat
from jat.config import ConfigError, config_from_dict
from jat.data import read_structures
from jat.training import train
from jat.training.errors import RunCompleteError
from jat.training.splits import split_indices

TINY = {"name": "jat", "cutoff": 3.0, "layers": 1, "width": 8, "heads": 1}


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory):
    return rattled_copper_file(tmp_path_factory.mktemp("cu"), 12)


def _config(path, run_dir, **split):
    return config_from_dict({
        "name": "cv",
        "run_dir": str(run_dir),
        "data": {"train": str(path), "split": {"kfold": 3, "test": 2, **split}},
        "model": dict(TINY),
        "training": {"epochs": 2, "batch_size": 4},
        "logging": {"progress": "none"},
    })


def test_folds_partition_what_the_test_set_leaves(cu_file):
    structures = list(read_structures(cu_file))
    splits = [split_indices(structures, test=2, kfold=3, fold=i, seed=5) for i in range(3)]
    tests = {tuple(s["test"]) for s in splits}
    assert len(tests) == 1 and len(next(iter(tests))) == 2  # one test set for every fold
    validation = [set(s["validation"]) for s in splits]
    assert sum(len(v) for v in validation) == 10 and len(set.union(*validation)) == 10
    for s in splits:
        assert not set(s["train"]) & set(s["validation"])
        assert set(s["train"]) | set(s["validation"]) | set(s["test"]) == set(range(12))
    with pytest.raises(ValueError, match="fold"):
        split_indices(structures, kfold=3, fold=3)


def test_cross_validation_run_gives_cv_estimate_and_committee(cu_file, tmp_path):
    result = train(_config(cu_file, tmp_path / "cv"))
    run = result.run_dir
    summary = json.loads((run / "summary.json").read_text())
    assert summary["kfold"] == 3 and len(summary["folds"]) == 3
    maes = [f["validation"]["forces_mae"] for f in summary["folds"]]
    cv = summary["cv"]["forces_mae"]
    assert cv["mean"] == pytest.approx(np.mean(maes))
    assert cv["std"] == pytest.approx(np.std(maes, ddof=1))
    validation = [json.loads((run / f"fold-{i}" / "split.json").read_text())["validation"]
                  for i in range(3)]
    assert sum(len(v) for v in validation) == len(set().union(*map(set, validation))) == 10
    committee = jat.Potential.load(run)
    assert committee.members == 3 and result.potential.members == 3
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.1, seed=50)
    r = committee.compute(atoms, members=True)
    fold1 = jat.Potential.load(run / "fold-1").compute(atoms)
    np.testing.assert_allclose(r.members.forces[1], fold1.forces, rtol=1e-5, atol=1e-6)
    assert r.forces_std.max() > 0
    with pytest.raises(RunCompleteError, match="all 3 folds"):
        train(resume=run)

    class Stop(BaseException):
        pass

    calls = []

    def crash(epoch, step, state):  # inside the second fold
        calls.append((epoch, step))
        if len(calls) == 7:
            raise Stop

    with pytest.raises(Stop):
        train(_config(cu_file, tmp_path / "again"), hooks={"after_step": crash})
    assert (tmp_path / "again" / "config.yaml").is_file()  # the parent is kept for --resume
    assert (tmp_path / "again" / "fold-0" / "summary.json").is_file()
    assert not (tmp_path / "again" / "fold-1" / "summary.json").exists()
    resumed = train(resume=tmp_path / "again")
    for x, y in zip(jax.tree.leaves(result.potential.params),
                    jax.tree.leaves(resumed.potential.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-8)


def test_kfold_configuration_errors(cu_file, tmp_path):
    with pytest.raises(ConfigError, match="kfold"):
        config_from_dict({"data": {"split": {"fold": 1}}})
    with pytest.raises(ConfigError, match="fold 3 does not exist"):
        config_from_dict({"data": {"split": {"kfold": 3, "fold": 3}}})
    with pytest.raises(ConfigError, match="kfold"):
        config_from_dict({"data": {"split": {"kfold": 1}}})
    cfg = config_from_dict({
        "run_dir": str(tmp_path / "x"),
        "data": {"train": str(cu_file), "validation": str(cu_file), "split": {"kfold": 2}},
        "model": dict(TINY),
        "logging": {"progress": "none"},
    })
    with pytest.raises(ValueError, match="use one of the two"):
        train(cfg)
