"""Hyperparameter search (``python -m jat.tune``): the search space and its errors, sampling,
a study end to end with its outputs, resuming, pruning."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.io import write
from conftest import emt_labelled

from jat.config import ConfigError, load_config
from jat.tune import BEST_FILE, PARETO_FILE, RESULTS_FILE, load_tune
from jat.tune.report import pareto_front

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "jat", "cutoff": 3.0, "layers": 1, "width": 8, "heads": 1}
SEARCH = {
    "model.width": {"choices": [4, 8]},
    "optimizer.lr_max": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
}


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory):
    """EMT-labelled rattled periodic Cu, 4 atoms (one batch shape: one compilation)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("emt")
    crystals = []
    for _ in range(12):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        crystals.append(emt_labelled(atoms))
    write(root / "cu.extxyz", crystals)
    return root / "cu.extxyz"


def _tune_file(tmp_path, cu_file, search=None, **settings) -> Path:
    doc = {
        "base": {
            "data": {"train": str(cu_file), "split": {"validation": 4}},
            "model": dict(TINY),
            "training": {"epochs": 2, "batch_size": 4},
            "logging": {"progress": "none"},
        },
        "search": SEARCH if search is None else search,
        "trials": 2,
        "pruner": "none",
        "study_dir": str(tmp_path / "study"),
        "inference_repeats": 2,
    }
    doc.update(settings)
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# the tuning file and the search space


@pytest.mark.parametrize(
    ("entry", "key", "problem"),
    [
        ({"model.widht": {"choices": [4, 8]}}, "search.model.widht", "did you mean 'width'"),
        ({"trainign.epochs": {"low": 1, "high": 3}}, "search.trainign.epochs", "training"),
        ({"model.width": {"low": 8, "high": 4}}, "search.model.width", "low (8) must be less"),
        ({"model.width": {"low": 8, "high": 8}}, "search.model.width", "must be less than"),
        ({"optimizer.lr_max": {"low": 0.0, "high": 0.1, "log": True}}, "search.optimizer.lr_max",
         "log scale needs low > 0"),
        ({"model.width": {"choices": []}}, "search.model.width", "choices is empty"),
        ({"model.width": {"choices": [4, 4]}}, "search.model.width", "duplicate"),
        ({"model.width": {"choices": [[4]]}}, "search.model.width", "choices must be numbers"),
        ({"model.width": {"low": "a", "high": 8}}, "search.model.width", "low must be a number"),
        ({"model.width": {"low": 2.5, "high": 8, "type": "int"}}, "search.model.width",
         "integer bounds"),
        ({"model.width": {"low": 2, "high": 8, "type": "str"}}, "search.model.width.type",
         "'int' or 'float'"),
        ({"model.width": {"low": 2}}, "search.model.width", "high missing"),
        ({"model.width": {"choices": [4], "low": 2}}, "search.model.width", "combined with low"),
        ({"model.width": {"lowe": 2, "high": 8}}, "search.model.width.lowe", "did you mean 'low'"),
        ({"model.width": {"low": 2, "high": 8, "step": 0}}, "search.model.width", "step must be"),
        ({"model.width": {"low": 1.0e-3, "high": 1.0, "log": True, "step": 0.1}},
         "search.model.width", "log and step"),
        ({"model.width": 8}, "search.model.width", "expected a mapping"),
        ({"model.width": {"choices": [0, 8]}}, "search.model.width", "with model.width = 0"),
        ({"training.batch_size": {"choices": ["a"]}}, "search.training.batch_size",
         "expected an integer"),
        ({"model.heads": {"choices": [1, 3]}}, "search.model.heads", "not divisible"),
        ({"run_dir": {"choices": ["a", "b"]}}, "search.run_dir", "set by the tuner"),
        ({}, "search", "search space is empty"),
    ],
)
def test_bad_search_space_names_file_entry_and_problem(tmp_path, cu_file, entry, key, problem):
    path = _tune_file(tmp_path, cu_file, search=entry)
    with pytest.raises(ConfigError) as info:
        load_tune(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {key}: "), text
    assert problem in text, text
    assert not (tmp_path / "study").exists()  # nothing started


@pytest.mark.parametrize(
    ("settings", "key", "problem"),
    [
        ({"trails": 3}, "trails", "did you mean 'trials'"),
        ({"objective": "force_mae"}, "objective", "did you mean 'forces_mae'"),
        ({"pruner": "hyperband"}, "pruner", "median"),
        ({"trials": 0}, "trials", "greater than or equal to 1"),
        ({"time_budget": "ten minutes"}, "time_budget", "duration"),
        ({"base": "missing.yaml"}, "base", "no such file"),
    ],
)
def test_bad_settings(tmp_path, cu_file, settings, key, problem):
    path = _tune_file(tmp_path, cu_file, **settings)
    with pytest.raises(ConfigError) as info:
        load_tune(path)
    assert str(info.value).startswith(f"{path}: {key}: "), str(info.value)
    assert problem in str(info.value)


def test_a_combination_valid_with_another_entry_passes(tmp_path, cu_file):
    """heads 3 does not divide the base width 8, but does divide a searched width 12."""
    search = {"model.width": {"choices": [12, 24]}, "model.heads": {"choices": [1, 3]}}
    load_tune(_tune_file(tmp_path, cu_file, search=search))


def test_overrides_and_defaults(tmp_path, cu_file):
    base = tmp_path / "train.yaml"
    base.write_text(
        yaml.safe_dump({"data": {"train": str(cu_file)}, "model": TINY,
                        "loss": {"forces_weight": 0.0, "energy_weight": 1.0}}),
        encoding="utf-8",
    )
    path = _tune_file(tmp_path, cu_file, base="train.yaml", search={
        "model.layers": {"low": 1, "high": 2},
        "optimizer.lr_max": {"low": "1e-3", "high": "1e-2"},  # YAML 1.1 reads 1e-3 as a string
    })
    spec = load_tune(path, ["trials=5", "base.training.epochs=4", "search.model.layers.high=3",
                            "search.model.cutoff={low: 2.5, high: 3.5}", "time_budget=2m"])
    assert spec.settings.trials == 5 and spec.settings.time_budget == 120
    assert spec.base_config.training.epochs == 4
    assert spec.search["model.layers"].high == 3 and spec.search["model.layers"].type == "int"
    assert spec.search["model.cutoff"].type == "float"
    assert spec.search["optimizer.lr_max"].low == pytest.approx(1e-3)
    assert spec.objective == "energy_atom_mae"  # the monitored figure of an energy-only loss
    with pytest.raises(ConfigError, match="^command line: search.model.layers: low"):
        load_tune(path, ["search.model.layers.low=7"])
    with pytest.raises(ConfigError, match="^command line: model.widht"):
        load_tune(path, ["base.model.widht=3"])


def test_sampling_gives_valid_configs_within_the_space(tmp_path, cu_file):
    search = {
        "model.width": {"choices": [4, 8, 16]},
        "model.layers": {"low": 1, "high": 3},
        "model.cutoff": {"low": 2.5, "high": 3.5, "step": 0.25},
        "optimizer.lr_max": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
        "training.batch_size": {"low": 2, "high": 8, "log": True},
    }
    spec = load_tune(_tune_file(tmp_path, cu_file, search=search, time_budget="30s"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        values = {k: p.suggest(trial, k) for k, p in spec.search.items()}
        cfg = spec.config(values, run_dir=tmp_path / "x", name="x")
        assert cfg.model.hyper["width"] in (4, 8, 16)
        assert isinstance(cfg.model.hyper["layers"], int) and 1 <= cfg.model.hyper["layers"] <= 3
        assert 2.5 <= cfg.model.cutoff <= 3.5 and (cfg.model.cutoff * 4) % 1 == 0
        assert 1e-3 <= cfg.optimizer.lr_max <= 1e-2
        assert isinstance(cfg.training.batch_size, int) and 2 <= cfg.training.batch_size <= 8
        assert cfg.training.time_budget == 30 and cfg.run_dir == str(tmp_path / "x")
        study.tell(trial, 0.0)


def test_pruners_and_samplers(tmp_path, cu_file):
    from jat.tune.study import make_pruner, make_sampler

    kinds = {"median": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner,
             "halving": optuna.pruners.SuccessiveHalvingPruner}
    for name, cls in kinds.items():
        spec = load_tune(_tune_file(tmp_path, cu_file, pruner=name, pruner_warmup=3))
        assert isinstance(make_pruner(spec), cls)
    spec = load_tune(_tune_file(tmp_path, cu_file, sampler="random"))
    assert isinstance(make_sampler(spec, 0), optuna.samplers.RandomSampler)
    spec = load_tune(_tune_file(tmp_path, cu_file))
    assert isinstance(make_sampler(spec, 0), optuna.samplers.TPESampler)


def test_pareto_front():
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (0.5, 9.0)]
    assert pareto_front(points) == [4, 0, 1, 3]
    assert pareto_front(points, maximize=True) == [4]


def test_examples_are_valid():
    for name in ("tune_tiny.yaml", "tune_ean.yaml"):
        spec = load_tune(REPO / "examples" / name)
        assert spec.search


# ---------------------------------------------------------------------------------------------
# studies


def test_failed_combination_is_a_failed_trial_and_the_study_goes_on(tmp_path, cu_file, capsys):
    """width 4 with heads 3 is rejected by the model: that trial fails (nothing trained), is
    counted, and is in the results with its error; no trial completed, so no best.yaml."""
    from jat.tune import report, run_study
    from jat.tune.study import open_study, study_lock

    search = {"model.width": {"choices": [4, 12]}, "model.heads": {"choices": [1, 3]}}
    path = _tune_file(tmp_path, cu_file, search=search, trials=1)
    spec = load_tune(path)
    with study_lock(spec.study_dir):
        study, _ = open_study(spec)
        study.enqueue_trial({"model.width": 4, "model.heads": 3})
    study = run_study(spec, say=lambda _: None)
    (trial,) = study.get_trials()
    assert trial.state.name == "FAIL" and "not divisible" in trial.user_attrs["error"]
    assert not (spec.study_dir / "trials").exists()
    out = report(study, spec)
    assert out["trials"] == {"fail": 1} and out["best"] is None
    with open(spec.study_dir / RESULTS_FILE, encoding="utf-8") as f:
        (row,) = csv.DictReader(f)
    assert row["state"] == "fail" and "not divisible" in row["note"]
    assert _main([path], capsys)["trials"] == {"fail": 1}  # done: nothing more to run


def test_ctrl_c_marks_the_trial_interrupted_and_it_is_retried(tmp_path, cu_file, monkeypatch):
    import jat.training
    from jat.training.errors import TrainingInterrupted
    from jat.tune import run_study
    from jat.tune.study import finished, open_study, recover, study_lock

    def interrupted(cfg, **kwargs):
        raise TrainingInterrupted("interrupted (SIGINT) during epoch 1", cfg.run_dir)

    monkeypatch.setattr(jat.training, "train", interrupted)
    spec = load_tune(_tune_file(tmp_path, cu_file))
    with pytest.raises(TrainingInterrupted):
        run_study(spec, say=lambda _: None)
    with study_lock(spec.study_dir):
        study, storage = open_study(spec)
        (trial,) = study.get_trials()
        assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"]
        assert finished(study) == 0  # does not count towards trials
        assert recover(study, storage) == [0]
        assert recover(study, storage) == []  # queued once
        waiting = study.get_trials()[1]
        assert waiting.state.name == "WAITING" and waiting.user_attrs["retry_of"] == 0


def test_cli_bad_space_exits_2_before_training(tmp_path, cu_file, capsys):
    from jat.tune.__main__ import main

    path = _tune_file(tmp_path, cu_file, search={"model.width": {"low": 8, "high": 4}})
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: search.model.width: low (8) must be less than high")
    assert not (tmp_path / "study").exists()


def test_study_directory_in_use_or_without_its_database(tmp_path, cu_file, capsys):
    from jat.tune import StudyError, StudyInUseError, run_study
    from jat.tune.__main__ import main
    from jat.tune.study import study_lock

    path = _tune_file(tmp_path, cu_file)
    spec = load_tune(path)
    with study_lock(spec.study_dir), pytest.raises(StudyInUseError, match="in use"):
        run_study(spec)
    (spec.study_dir / "trials" / "0000").mkdir(parents=True)
    with pytest.raises(StudyError, match="study.db is missing"):
        run_study(spec)
    assert main([str(path), "--report"]) == 2
    assert "no study" in capsys.readouterr().err


def _main(args, capsys) -> dict:
    from jat.tune.__main__ import main

    assert main([str(a) for a in args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_study_end_to_end_then_resume(tmp_path, cu_file, capsys):
    """Two trials, the outputs, best.yaml a training config; then a trial left running by a
    killed process is retried and the completed ones are kept."""
    from jat.tune import run_study
    from jat.tune.study import open_study, study_lock

    path = _tune_file(tmp_path, cu_file)
    study_dir = tmp_path / "study"
    out = _main([path], capsys)
    assert out["trials"] == {"complete": 2}
    assert out["best"]["params"].keys() == SEARCH.keys()
    with open(study_dir / RESULTS_FILE, encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["state"] for r in table] == ["complete", "complete"]
    values = [float(r["val_forces_mae"]) for r in table]
    assert values == sorted(values) and values[0] == pytest.approx(out["best"]["value"])
    for r in table:
        assert float(r["train_time_s"]) > 0 and float(r["inference_ms"]) > 0
        assert int(r["n_params"]) > 0 and r["inference_atoms"] == "4"
        assert (Path(r["run_dir"]) / "summary.json").is_file()
    assert (study_dir / PARETO_FILE).stat().st_size > 0
    best = load_config(study_dir / BEST_FILE)
    assert best.run_dir is None and best.data.train == (str(cu_file),)
    assert best.model.hyper["width"] == out["best"]["params"]["model.width"]
    assert best.optimizer.lr_max == pytest.approx(out["best"]["params"]["optimizer.lr_max"])

    # a process dies while trial 2 runs: it stays RUNNING in the study
    spec = load_tune(path, ["trials=3"])
    with study_lock(study_dir):
        study, _ = open_study(spec)
        study.enqueue_trial({"model.width": 4, "optimizer.lr_max": 2e-3})
        trial = study.ask()
        for k, p in spec.search.items():
            p.suggest(trial, k)
    before = {t.number: t.value for t in study.get_trials() if t.value is not None}
    study = run_study(spec, say=lambda _: None)
    trials = study.get_trials()
    assert {t.number: t.value for t in trials if t.number in before} == before  # kept
    assert trials[2].state.name == "FAIL" and trials[2].user_attrs["interrupted"]
    assert trials[3].state.name == "COMPLETE" and trials[3].user_attrs["retry_of"] == 2
    assert trials[3].params == {"model.width": 4, "optimizer.lr_max": 2e-3}
    assert len(trials) == 4
    # finished: the same command trains nothing and rewrites the outputs
    (study_dir / BEST_FILE).unlink()
    out = _main([path, "trials=3"], capsys)
    assert out["trials"] == {"complete": 3, "interrupted": 1}
    assert (study_dir / BEST_FILE).is_file()
    assert _main([path, "--report"], capsys)["trials"] == out["trials"]


@pytest.mark.slow
def test_pruned_trials_stop_cleanly(tmp_path, cu_file, capsys):
    """A pruner that prunes every reported value: each trial stops after its first evaluation,
    its run directory complete (stop reason "hook"), and there is no best configuration."""
    from jat.training import train
    from jat.training.errors import RunCompleteError
    from jat.tune import report, run_study

    spec = load_tune(_tune_file(tmp_path, cu_file), ["trials=1", "base.training.epochs=4"])
    messages = []
    study = run_study(spec, pruner=optuna.pruners.ThresholdPruner(upper=0.0),
                      say=messages.append)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["PRUNED"]
    for t in trials:
        assert list(t.intermediate_values) == [1]
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["stop_reason"] == "hook" and summary["epochs"] == 1
        with pytest.raises(RunCompleteError, match="stopped by a hook"):  # a complete run
            train(resume=t.user_attrs["run_dir"])
    assert any("pruned after epoch 1" in m for m in messages)
    out = report(study, spec)
    assert out["best"] is None and out["trials"] == {"pruned": 1}
    assert not (spec.study_dir / BEST_FILE).exists()
    assert (spec.study_dir / RESULTS_FILE).is_file() and (spec.study_dir / PARETO_FILE).is_file()
