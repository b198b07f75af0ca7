"""Training: schedule, loss, buckets and padding, splits, energy reference, the run directory,
checkpoints, exact resume after a crash, the command line."""

from __future__ import annotations

import functools
import io
import json
import math
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from conftest import emt_labelled

import jat
from jat import atomic_io
from jat.config import config_from_dict, dump_config
from jat.data import read_structures
from jat.data.structure import Structure
from jat.evaluate import main as evaluate_main
from jat.training import checkpoint, optim, planning, steps, train
from jat.training.dataset import align_edge_slots, build_dataset, choose_buckets
from jat.training.errors import NonFiniteError, RunCompleteError, RunExistsError
from jat.training.loop import METRICS_FILE
from jat.training.progress import Progress
from jat.training.splits import fit_energy_reference, split_indices
from jat.training.state import RunProgress

TINY = {"name": "jat", "cutoff": 3.0, "layers": 1, "width": 8, "heads": 1}
TIME_KEYS = {"train_structures_per_s", "train_atoms_per_s", "train_time", "epoch_time", "elapsed"}


@pytest.fixture(scope="module")
def emt_files(tmp_path_factory):
    """EMT-labelled data: rattled periodic Cu (8 and 4 atoms) and small molecules."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("emt")
    crystals = []
    for k in range(24):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        if k % 3 == 0:
            atoms = atoms.repeat((2, 1, 1))
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        crystals.append(emt_labelled(atoms))
    molecules = []
    for k in range(18):
        atoms = molecule(("CH4", "NH3", "H2O")[k % 3])
        atoms.rattle(0.05, seed=k)
        molecules.append(emt_labelled(atoms))
    write(root / "cu.extxyz", crystals)
    write(root / "mol.extxyz", molecules)
    return root


def _config(path, tmp_path, **sections):
    cfg = {
        "name": "t",
        "run_dir": str(tmp_path / "run"),
        "data": {"train": str(path), "split": {"validation": 4}},
        "model": dict(TINY),
        "training": {"epochs": 3, "batch_size": 4},
        "logging": {"progress": "none"},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.update(
            {key: value}
        )
    return config_from_dict(cfg)


# ---------------------------------------------------------------------------------------------
# pure pieces


def test_onecycle_corners_and_final_value():
    s = optim.Schedule("onecycle", 5e-4, 3e-3, 5e-6, total_steps=101, steps_per_epoch=10)
    v = s.values(0, 101)
    assert v[0] == pytest.approx(5e-4, rel=1e-5)
    assert v.max() == pytest.approx(3e-3, rel=1e-5) and int(np.argmax(v)) == 45
    assert v[90] == pytest.approx(5e-4, rel=1e-5)
    assert v[100] == pytest.approx(5e-6, rel=1e-4)  # exactly lr_final, not lr_min·final/max
    assert s(500) == pytest.approx(5e-6, rel=1e-4)  # stays there past the end
    per_epoch = optim.Schedule("onecycle", 1e-4, 1e-3, 1e-5, 100, 10, per_epoch=True)
    w = per_epoch.values(0, 30)
    np.testing.assert_allclose(w[:10], w[10:20])
    assert w[9] == pytest.approx(1e-5, rel=1e-4)
    assert optim.Schedule("constant", 1e-4, 1e-3, 1e-5, 10, 5)(7) == pytest.approx(1e-3)


def test_log_cosh_scale():
    x = jnp.array([1e-4, 0.05, 3.0, 50.0])
    alpha = 0.1
    expected = alpha * np.log(np.cosh(np.asarray(x, np.float64) / alpha))
    # optax's log(e^x + e^-x) - log 2 cancels near 0 in float32: absolute error ~1e-8 there
    np.testing.assert_allclose(steps.log_cosh(x, alpha), expected, rtol=1e-4, atol=1e-7)
    assert np.isfinite(steps.log_cosh(jnp.array(1e4), 1e-3))  # no overflow far out
    # the gradient, which is what trains, is tanh(x/α) to 1e-4 relative even near 0
    grad = jax.vmap(jax.grad(lambda v: steps.log_cosh(v, alpha)))(x)
    np.testing.assert_allclose(grad, np.tanh(np.asarray(x, np.float64) / alpha), rtol=1e-4)


def test_choose_buckets_is_optimal_and_bounded():
    sizes = [3] * 50 + [4] * 50 + [20] * 5 + [21] * 5
    assert choose_buckets(sizes, 2) == [4, 21]
    assert choose_buckets(sizes, 10) == [3, 4, 20, 21]
    assert choose_buckets([7], 3) == [7]
    assert len(choose_buckets(list(range(1, 100)), 4)) == 4


def test_energy_reference_least_squares():
    mu = {"H": -13.6, "C": -1030.0, "O": -2040.0}
    structures = []
    for formula in ("CH4", "H2O", "CO2", "C2H6", "CH3OH"):
        atoms = molecule(formula)
        e = sum(mu[s] for s in atoms.get_chemical_symbols())
        structures.append(
            Structure(tuple(atoms.get_chemical_symbols()), atoms.positions, np.zeros((3, 3)),
                      (False,) * 3, energy=e)
        )
    shift, scale = fit_energy_reference(structures, ("H", "C", "O"), forces_trained=False)
    np.testing.assert_allclose(shift, [mu["H"], mu["C"], mu["O"]], rtol=1e-9)
    assert scale == 1.0  # zero residual falls back to 1


def test_split_by_configuration_and_molecule(emt_files):
    mol = list(read_structures(emt_files / "mol.extxyz"))
    a = split_indices(mol, validation=0.25, test=3, seed=1)
    b = split_indices(mol, validation=0.25, test=3, seed=1)
    assert a == b
    assert len(a["test"]) == 3 and len(a["validation"]) == 4
    everything = sorted(a["train"] + a["validation"] + a["test"])
    assert everything == list(range(len(mol)))
    by_mol = split_indices(mol, by="molecule", test=1, validation=0.2, seed=3)
    held = {mol[k].formula for k in by_mol["test"]}
    assert len(held) == 1
    assert not held & {mol[k].formula for k in by_mol["train"] + by_mol["validation"]}
    ex = split_indices(mol, validation=0, exclude_formulas=["H2O"])
    assert {mol[k].formula for k in ex["excluded"]} == {"H2O"}
    assert "H2O" not in {mol[k].formula for k in ex["train"]}


def test_padding_never_changes_loss_or_metrics(emt_files):
    """The same structures evaluated in tight and in generous shapes, and with weight-zero
    fillers in a short batch, give the same loss and error sums."""
    structures = list(read_structures(emt_files / "cu.extxyz"))[:6]
    pot = jat.Potential.create("jat", ["Cu"], 3.0, layers=1, width=8, heads=1)
    shift = np.array([-0.1])
    tight = build_dataset(structures, ("Cu",), 3.0, shift, [4, 8])
    loose = align_edge_slots(
        {"a": build_dataset(structures, ("Cu",), 3.0, shift, [16]), "b": tight}
    )["a"]
    spec = steps.LossSpec(forces_weight=1.0, energy_weight=0.5)

    evaluate = jax.jit(functools.partial(steps.eval_step, pot.energy_model, spec, True))

    def total(data, size):
        parts = [
            evaluate(pot.params, jnp.ones(1), batch)
            for _, batch in data.iterate(size, jnp.float32)
        ]
        return steps.reduce_sums(parts)

    ref = total(tight, 6)
    for data, size in ((tight, 4), (loose, 5), (loose, 6)):
        got = total(data, size)
        assert got.keys() == ref.keys()
        for key in ref:
            assert got[key] == pytest.approx(ref[key], rel=2e-5, abs=1e-7), key


# ---------------------------------------------------------------------------------------------
# runs


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def test_run_directory_and_loadable_best_model(emt_files, tmp_path, capsys):
    cfg = _config(emt_files / "cu.extxyz", tmp_path, loss={"energy_weight": 0.1})
    result = train(cfg)
    run = result.run_dir
    for name in ("config.yaml", "split.json", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    for name in ("best", "last"):
        assert (run / name / "metadata.json").is_file()
    assert (run / "last" / "train_state.msgpack").is_file()
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["val_forces_mae"]) for r in rows)
    split = json.loads((run / "split.json").read_text())
    assert len(split["validation"]) == 4 and len(split["train"]) == 20
    summary = json.loads((run / "summary.json").read_text())
    assert summary["compilations"]["train"] <= cfg.training.max_buckets

    # the saved best model reproduces the reported validation errors through Potential
    pot = jat.Potential.load(run)
    by_source = {s.source: s for s in read_structures(emt_files / "cu.extxyz")}
    errs, ferrs = [], []
    for source in split["validation"]:
        s = by_source[source]
        res = pot.compute(s.to_atoms(), stress=False)
        errs.append(abs(res.energy - s.energy) / s.n_atoms)
        ferrs.append(np.abs(res.forces - s.forces).ravel())
    val = summary["validation"]
    assert np.mean(errs) == pytest.approx(val["energy_atom_mae"], rel=1e-3, abs=1e-6)
    assert np.mean(np.concatenate(ferrs)) == pytest.approx(val["forces_mae"], rel=1e-3)
    # and so does python -m jat.evaluate RUN --split validation, on the run's own split
    capsys.readouterr()
    out = ["--no-plots", "--out", str(tmp_path / "evaluation")]
    assert evaluate_main([str(run), "--split", "validation", *out]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["structures"] == 4
    assert metrics["forces"]["mae"] == pytest.approx(val["forces_mae"], rel=1e-3)
    assert evaluate_main([str(run), "--split", "test", *out]) == 2  # this run has no test set
    assert "test set is empty" in capsys.readouterr().err
    # training improved on the initial model
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_energy_only_molecules_by_molecule(emt_files, tmp_path):
    cfg = _config(
        emt_files / "mol.extxyz",
        tmp_path,
        data={"split": {"by": "molecule", "test": 1, "validation": 0.2}},
        loss={"forces_weight": 0.0, "energy_weight": 1.0},
    )
    result = train(cfg)
    # forces are in the data, so they are reported, though not trained
    assert result.summary["validation"]["forces_mae"] > 0
    assert result.summary["test"]["energy_atom_mae"] > 0
    assert result.summary["n_structures"]["test"] == 6  # one whole molecule


class Crash(Exception):
    pass


def test_resume_after_crash_continues_exactly(emt_files, tmp_path):
    """A run killed in the middle of epoch 3 and resumed gives the same metrics as a run that
    never stopped (time figures aside), and ends in the same parameters."""
    path = emt_files / "cu.extxyz"
    overrides = {"training": {"epochs": 4, "batch_size": 4}, "optimizer": {"clip_norm": 1.0}}
    ref = train(_config(path, tmp_path / "a", **overrides))

    def crash(epoch, step, state):
        if epoch == 3 and step == 2:
            raise Crash

    cfg = _config(path, tmp_path / "b", **overrides)
    with pytest.raises(Crash):
        train(cfg, hooks={"after_step": crash})
    run = tmp_path / "b" / "run"
    assert [r["epoch"] for r in _rows(run)] == [1, 2]
    resumed = jat.training.resume(run)
    a, b = _rows(ref.run_dir), _rows(run)
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b, strict=True):
        for key in ra.keys() - TIME_KEYS:
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-12), key
    for x, y in zip(jax.tree.leaves(ref.potential.params),
                    jax.tree.leaves(resumed.potential.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)


def test_crash_while_writing_checkpoint_keeps_previous(emt_files, tmp_path, monkeypatch):
    cfg = _config(emt_files / "cu.extxyz", tmp_path, training={"epochs": 2})
    result = train(cfg)
    last = result.run_dir / "last"
    before = (last / "train_state.msgpack").read_bytes()
    pot = jat.Potential.create("jat", ["Cu"], 3.0, layers=1, width=8, heads=1)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.serialization, "msgpack_serialize", broken)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(last, pot, None, RunProgress(epoch=99))
    assert (last / "train_state.msgpack").read_bytes() == before
    assert json.loads((last / "progress.json").read_text())["epoch"] == 2


class Killed(BaseException):
    """Stands in for SIGKILL: no ``except Exception`` clean-up runs for it."""


def _kill_at(at_epoch, at_step):
    def hook(epoch, step, state):
        if (epoch, step) == (at_epoch, at_step):
            raise Killed

    return {"after_step": hook}


@pytest.fixture(scope="module")
def reference(emt_files, tmp_path_factory):
    """An uninterrupted run of the default test configuration (3 epochs)."""
    return train(_config(emt_files / "cu.extxyz", tmp_path_factory.mktemp("reference")))


def _same_rows(a, b):
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ra.keys() - TIME_KEYS:
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-12), key


def test_run_killed_before_its_first_checkpoint_is_resumed_from_the_start(
    emt_files, tmp_path, reference
):
    """It used to be neither resumable (no checkpoint) nor restartable (the directory holds a
    run), each message pointing at the other command."""
    cfg = _config(emt_files / "cu.extxyz", tmp_path)
    with pytest.raises(Killed):
        train(cfg, hooks=_kill_at(1, 1))
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and not (run / "last").exists()
    with pytest.raises(RunExistsError, match="--resume"):
        train(cfg)
    out = io.StringIO()
    jat.training.resume(run, progress=Progress("lines", out))
    assert "starting it again from the beginning" in out.getvalue()
    _same_rows(_rows(reference.run_dir), _rows(run))


def test_non_finite_step_stops_training_and_never_becomes_best(
    emt_files, tmp_path, monkeypatch, reference
):
    """From epoch 3 on the learning rate is 1e30: the first such step is finite, the next one's
    loss is not. Training stops at the end of that epoch naming the batch; nothing of epoch 3 is
    written and best/ and last/ keep finite parameters."""
    original = steps.train_step
    spe = _rows(reference.run_dir)[0]["step"]

    def exploding(model, tx, spec, ema_decay, state, scale, batch, lr):
        lr = jnp.where(state.step >= 2 * spe, jnp.float32(1e30), lr)
        return original(model, tx, spec, ema_decay, state, scale, batch, lr)

    monkeypatch.setattr(steps, "train_step", exploding)
    cfg = _config(emt_files / "cu.extxyz", tmp_path, optimizer={"ema_decay": None})
    with pytest.raises(NonFiniteError) as info:
        train(cfg)
    text = str(info.value)
    assert f"epoch 3, step 2 of {spe}" in text and "the loss became" in text
    assert "cu.extxyz:frame " in text  # the structures of the batch, by file and entry
    assert "checkpoint of epoch 2" in text
    run = tmp_path / "run"
    assert [r["epoch"] for r in _rows(run)] == [1, 2]
    for name in ("best", "last"):
        pot = jat.Potential.load(run / name)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(pot.params)), name
    assert json.loads((run / "last" / "progress.json").read_text())["epoch"] == 2


def test_run_that_stopped_on_patience_is_not_trained_on(emt_files, tmp_path):
    """A learning rate of 1e-30 leaves the parameters as they are, so epoch 2 does not improve
    and patience 1 stops the run. Resuming it is refused; killed before its summary was written
    it is finished without training, also from a checkpoint older than recorded stop reasons."""
    cfg = _config(
        emt_files / "cu.extxyz",
        tmp_path,
        training={"epochs": 6, "patience": 1},
        optimizer={"schedule": "constant", "lr_max": 1e-30, "ema_decay": None},
    )
    result = train(cfg)
    run = result.run_dir
    assert result.summary["stop_reason"] == "patience" and result.summary["epochs"] == 2
    with pytest.raises(RunCompleteError, match="complete.*no improvement in 1 evaluations"):
        jat.training.resume(run)
    progress = run / "last" / "progress.json"
    old = json.loads(progress.read_text())
    del old["stop_reason"]  # as written before stop reasons were recorded
    progress.write_text(json.dumps(old))
    (run / "summary.json").unlink()
    out = io.StringIO()
    again = jat.training.resume(run, progress=Progress("lines", out))
    assert "finishing it" in out.getvalue()
    assert [r["epoch"] for r in _rows(run)] == [1, 2]
    assert again.summary["best_epoch"] == 1 and again.summary["stop_reason"] == "patience"


def test_time_budget_run_resumes_on_its_planned_schedule(emt_files, tmp_path):
    """Killed after the re-plan, the resumed run keeps the planned epochs and its one-cycle
    schedule (the learning rates continue the same curve to lr_final), says what budget is
    left, and does not charge its own set-up and compilation to the budget (which used to cut
    the schedule short without a word). The budget is ample, so the plan is epochs=6."""
    cfg = _config(
        emt_files / "cu.extxyz", tmp_path, training={"epochs": 6, "time_budget": 1000}
    )
    with pytest.raises(Killed):
        train(cfg, hooks=_kill_at(planning.REPLAN_EPOCH + 1, 0))
    run = tmp_path / "run"
    before = json.loads((run / "last" / "progress.json").read_text())
    assert before["replanned"] and before["planned_epochs"] == 6
    out = io.StringIO()
    result = jat.training.resume(run, progress=Progress("lines", out))
    assert "time budget 1000 s:" in out.getvalue()
    assert "left for the 3 remaining of 6 planned epochs" in out.getvalue()
    assert result.summary["planned_epochs"] == 6 and result.summary["stop_reason"] == "epochs"
    rows = _rows(run)
    spe = rows[0]["step"]
    schedule = optim.Schedule("onecycle", cfg.optimizer.lr_min, cfg.optimizer.lr_max,
                              cfg.optimizer.lr_final, 6 * spe, spe)
    for row in rows:
        assert row["lr"] == pytest.approx(schedule(row["step"] - 1), rel=1e-5)
    assert rows[-1]["lr"] == pytest.approx(cfg.optimizer.lr_final, rel=1e-4)
    first = rows[planning.REPLAN_EPOCH]  # the first epoch of the resumed process
    assert first["elapsed"] - before["elapsed"] < first["epoch_time"] + 0.5


def test_time_budget_plans_and_stops(emt_files, tmp_path):
    cfg = _config(
        emt_files / "cu.extxyz", tmp_path, training={"epochs": 10_000, "time_budget": 8}
    )
    result = train(cfg)
    progress = json.loads((result.run_dir / "last" / "progress.json").read_text())
    assert 1 <= progress["planned_epochs"] < 10_000
    # the rule, on the recorded times (a wall-clock bound fails on a loaded machine): every
    # epoch but the last was expected to leave room for one more; the last stops the run
    rows = _rows(result.run_dir)
    assert result.summary["stop_reason"] in ("epochs", "time_budget")
    for row in rows[:-1]:
        assert row["elapsed"] + row["epoch_time"] <= 8
    if result.summary["stop_reason"] == "time_budget":
        assert rows[-1]["elapsed"] + rows[-1]["epoch_time"] > 8
    else:
        assert rows[-1]["epoch"] == progress["planned_epochs"]


def test_a_budgeted_run_that_slows_down_shortens_its_plan_and_ends_its_schedule(
    emt_files, tmp_path
):
    """Epochs that become several times slower after the re-plan (a loaded machine) would
    leave most of the planned schedule unrun at the budget; the plan is shortened instead, so
    the learning rate still comes down to lr_final (up to the last epoch, which the budget's
    own stop may take on a noisy machine). The budget is charged with the set-up and the
    compilation too (up to ~40 s on one loaded core), so it leaves room for them."""
    budget = 60
    cfg = _config(
        emt_files / "cu.extxyz", tmp_path, training={"epochs": 10_000, "time_budget": budget}
    )

    def slow(epoch, step, state):
        if epoch > planning.REPLAN_EPOCH:
            time.sleep(0.05)

    out = io.StringIO()
    result = train(cfg, hooks={"after_step": slow}, progress=Progress("lines", out))
    assert "shortening the plan to" in out.getvalue()
    progress = json.loads((result.run_dir / "last" / "progress.json").read_text())
    rows = _rows(result.run_dir)
    assert rows[-1]["epoch"] >= progress["planned_epochs"] - 1
    spe = rows[0]["step"]
    end = optim.Schedule("onecycle", cfg.optimizer.lr_min, cfg.optimizer.lr_max,
                         cfg.optimizer.lr_final, progress["planned_epochs"] * spe, spe)
    assert rows[-1]["lr"] == pytest.approx(end(rows[-1]["step"] - 1), rel=1e-5)
    assert rows[-1]["lr"] < 0.1 * cfg.optimizer.lr_max
    assert rows[-1]["elapsed"] <= budget


def test_existing_run_dir_is_not_overwritten(emt_files, tmp_path):
    cfg = _config(emt_files / "cu.extxyz", tmp_path, training={"epochs": 1})
    train(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)


def test_missing_labels_are_reported(emt_files, tmp_path):
    mol = [s.to_atoms() for s in read_structures(emt_files / "mol.extxyz")]
    for atoms in mol:
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy())
    write(tmp_path / "energies.extxyz", mol)
    cfg = _config(tmp_path / "energies.extxyz", tmp_path)
    with pytest.raises(ValueError, match="no forces"):
        train(cfg)
    # the failed start took its claim back: the same command gives the same error, not a
    # refusal of the run directory
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="no forces"):
        train(cfg)


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_template_and_errors(capsys, tmp_path):
    from jat.train import main

    assert main(["--template"]) == 0
    assert "forces_alpha" in capsys.readouterr().out
    assert main(["training.epoks=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert main(["data.train=" + str(tmp_path / "nope.extxyz"), "logging.progress=none",
                 f"output_dir={tmp_path}"]) == 2
    assert "nope.extxyz" in capsys.readouterr().err


def test_cli_wandb_offline(emt_files, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from jat.train import main

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [
        f"data.train={emt_files / 'cu.extxyz'}", "data.split.validation=4",
        f"run_dir={tmp_path / 'run'}", "training.epochs=1", "training.batch_size=4",
        "logging.wandb=true", "logging.progress=lines",
    ] + [f"model.{k}={v}" for k, v in TINY.items()]
    assert main(args) == 0
    assert list((tmp_path / "run").rglob("*.wandb")), "no offline wandb run written"


def _cli_config(emt_files, tmp_path, name):
    """A config file for ``main`` equal to ``_config``'s (same run as the ``reference``)."""
    cfg = _config(emt_files / "cu.extxyz", tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_config(cfg))
    return path, tmp_path / name / "run"


def test_cli_disk_full_and_read_only_say_what_is_intact(emt_files, tmp_path, monkeypatch,
                                                        capsys, reference):
    from jat.train import main

    config, run = _cli_config(emt_files, tmp_path, "full")
    monkeypatch.setenv(atomic_io.FAULT_ENV, "write:last:files@2=ENOSPC")
    atomic_io.reset_fault_counts()
    assert main([str(config)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err
    assert "checkpoint of epoch 1" in err and f"--resume {run}" in err
    monkeypatch.delenv(atomic_io.FAULT_ENV)
    assert main(["--resume", str(run)]) == 0
    _same_rows(_rows(reference.run_dir), _rows(run))

    config, run = _cli_config(emt_files, tmp_path, "ro")
    monkeypatch.setenv(atomic_io.FAULT_ENV, "write:best:files@1=EROFS")
    atomic_io.reset_fault_counts()
    assert main([str(config)]) == 1
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "no checkpoint was written yet" in err
    assert f"--resume {run}` starts the run again" in err


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_cli_interrupt_names_the_run_directory(emt_files, tmp_path, monkeypatch, capsys,
                                               reference):
    """Ctrl-C (here sent by the process itself at its 7th step, in epoch 2) stops the run at the
    next step; the message printed the literal RUN_DIR before."""
    from jat.train import main

    config, run = _cli_config(emt_files, tmp_path, "int")
    monkeypatch.setenv(atomic_io.FAULT_ENV, "train:step@7=sigint")
    atomic_io.reset_fault_counts()
    assert main([str(config)]) == 130
    err = capsys.readouterr().err
    assert "RUN_DIR" not in err and "during epoch 2" in err
    assert f"checkpoint of epoch 1 in {run / 'last'} is intact" in err
    assert f"python -m jat.train --resume {run}" in err
    monkeypatch.delenv(atomic_io.FAULT_ENV)
    assert main(["--resume", str(run)]) == 0
    _same_rows(_rows(reference.run_dir), _rows(run))
    assert main(["--resume", str(run)]) == 0  # complete: said so, nothing trained
    assert "is complete" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_process_resumes(emt_files, tmp_path):
    """SIGKILL a real ``python -m jat.train`` after its second epoch, resume it from the
    command line, and compare with an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    def args(run_dir):
        return [
            sys.executable, "-m", "jat.train", f"data.train={emt_files / 'cu.extxyz'}",
            "data.split.validation=4", f"run_dir={run_dir}", "training.epochs=6",
            "training.batch_size=4", "logging.progress=lines",
        ] + [f"model.{k}={v}" for k, v in TINY.items()]

    ref = tmp_path / "ref"
    subprocess.run(args(ref), check=True, capture_output=True, timeout=600)
    run = tmp_path / "run"
    proc = subprocess.Popen(args(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        metrics = run / METRICS_FILE
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_rows(run))
    assert done < 6, "the run finished before the kill"
    subprocess.run(
        [sys.executable, "-m", "jat.train", "--resume", str(run)],
        check=True, capture_output=True, timeout=600,
    )
    a, b = _rows(ref), _rows(run)
    assert [r["epoch"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b, strict=True):
        for key in ra.keys() - TIME_KEYS:
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-12), key
