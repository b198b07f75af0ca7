"""Crash-safe writes and recovery (jat.atomic_io), the run directory's claim and lock, the typed
run progress and the time-budget planning rules: everything of a run that needs no training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jat
from jat import atomic_io
from jat.training import checkpoint, planning
from jat.training.errors import (
    NonFiniteError,
    NotARunError,
    RunExistsError,
    RunInUseError,
    RunWriteError,
)
from jat.training.rundir import CONFIG_FILE, RunDirectory, holds_run
from jat.training.state import RunProgress


@pytest.fixture(scope="module")
def potential():
    return jat.Potential.create("jat", ["Cu"], 3.0, layers=1, width=8, heads=1)


def _leftovers(directory):
    names = (p.name for p in directory.iterdir())
    return sorted(n for n in names if n.startswith(".") and n != ".lock")


# ---------------------------------------------------------------------------------------------
# atomic writes and recovery


def test_atomic_directory_refuses_a_file_target(tmp_path):
    """Saving onto an existing file used to move the file aside and then fail."""
    target = tmp_path / "model"
    target.write_text("not a potential")
    with pytest.raises(NotADirectoryError, match="is a file"):
        with atomic_io.atomic_directory(target) as tmp:
            (tmp / "x").write_text("x")
    assert target.read_text() == "not a potential"
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_io.atomic_directory(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_io.atomic_directory(target) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError
    assert (target / "a").read_text() == "old"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("phase", ["files", "moved-aside", "swapped"])
def test_recover_after_a_writer_died_at_each_phase(tmp_path, potential, phase):
    """A writer killed at any point of the swap leaves a directory that ``Potential.load`` of the
    run and of ``best/`` itself both read (recovering on the way), and no temporary leftovers."""
    run = tmp_path / "run"
    run.mkdir()
    potential.save(run / "best")
    script = textwrap.dedent(
        f"""
        import jat
        pot = jat.Potential.create("jat", ["Cu"], 3.0, layers=1, width=8, heads=1, seed=7)
        pot.save({str(run / "best")!r})
        """
    )
    env = dict(os.environ, JAT_TEST_FAULT=f"write:best:{phase}@1=kill", PYTHONPATH=_root())
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    if phase == "moved-aside":
        assert not (run / "best").exists() and (run / ".best.old").is_dir()
    loaded = jat.Potential.load(run)  # recovers run/best from the backup
    assert _leftovers(run) == []
    again = jat.Potential.load(run / "best")
    new = jat.Potential.create("jat", ["Cu"], 3.0, layers=1, width=8, heads=1, seed=7)
    expected = new if phase == "swapped" else potential
    for a, b, c in zip(*(jat_leaves(p) for p in (loaded, again, expected)), strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


def jat_leaves(pot):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(pot.params)]


def _root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_recover_restores_a_missing_target_from_its_backup(tmp_path):
    (tmp_path / ".last.old").mkdir()
    (tmp_path / ".last.old" / "f").write_text("complete")
    (tmp_path / ".last.tmp-abc123").mkdir()  # a dead writer's copy
    (tmp_path / ".split.json.tmp-xyz").write_text("{")
    atomic_io.recover(tmp_path)
    assert (tmp_path / "last" / "f").read_text() == "complete"
    assert _leftovers(tmp_path) == []
    # a backup beside a complete new version is dropped
    (tmp_path / ".last.old").mkdir()
    atomic_io.recover(tmp_path / "last")
    assert _leftovers(tmp_path) == [] and (tmp_path / "last" / "f").exists()


def test_fault_hook_raises_the_named_errno(tmp_path, monkeypatch):
    monkeypatch.setenv(atomic_io.FAULT_ENV, "write:x:files@2=ENOSPC")
    atomic_io.reset_fault_counts()
    with atomic_io.atomic_directory(tmp_path / "x"):
        pass
    with pytest.raises(OSError) as info, atomic_io.atomic_directory(tmp_path / "x"):
        pass
    assert info.value.errno == 28
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# claiming and locking


def test_explicit_run_dir_is_claimed_once_and_locked(tmp_path):
    path = tmp_path / "run"
    first = RunDirectory.claim(str(path), tmp_path, "t", "a: 1\n")
    assert (path / CONFIG_FILE).read_text() == "a: 1\n"
    # a second claim or a resume while the first is alive: refused, naming the live process
    with pytest.raises(RunInUseError, match=f"pid {os.getpid()}"):
        RunDirectory.claim(str(path), tmp_path, "t", "b: 2\n")
    with pytest.raises(RunInUseError, match="still running"):
        RunDirectory.open(path)
    first.release()
    # once it is gone, a new start is refused pointing at --resume, and --resume opens it
    with pytest.raises(RunExistsError, match=f"--resume {path}"):
        RunDirectory.claim(str(path), tmp_path, "t", "b: 2\n")
    with RunDirectory.open(path) as run:
        assert run.path == path
    assert (path / CONFIG_FILE).read_text() == "a: 1\n"


def test_default_run_dirs_started_in_the_same_second_differ(tmp_path):
    runs = [RunDirectory.claim(None, tmp_path, "t", f"k: {k}\n") for k in range(3)]
    paths = {r.path for r in runs}
    assert len(paths) == 3
    for k, r in enumerate(runs):
        assert (r.path / CONFIG_FILE).read_text() == f"k: {k}\n"
        r.release()


def test_empty_existing_directory_can_be_claimed(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    assert not holds_run(path)
    with pytest.raises(NotARunError, match="holds no run to resume"):
        RunDirectory.open(path)  # not a run yet: points at a fresh start, which works
    RunDirectory.claim(str(path), tmp_path, "t", "x: 1\n").release()
    assert holds_run(path)


def test_file_as_run_dir_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RunExistsError, match="not a directory"):
        RunDirectory.claim(str(path), tmp_path, "t", "x: 1\n")
    with pytest.raises(NotARunError):
        RunDirectory.open(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_dir_is_reported(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(RunWriteError, match="cannot write"):
            RunDirectory.claim(None, tmp_path / "runs", "t", "x: 1\n")
    finally:
        tmp_path.chmod(0o700)


def test_write_errors_name_what_is_intact(tmp_path, potential, monkeypatch):
    run = RunDirectory.claim(str(tmp_path / "run"), tmp_path, "t", "x: 1\n")
    run.save_checkpoint("last", potential, None, RunProgress(epoch=4, step=40))
    monkeypatch.setenv(atomic_io.FAULT_ENV, "write:last:files@1=EROFS")
    atomic_io.reset_fault_counts()
    with pytest.raises(RunWriteError) as info:
        run.save_checkpoint("last", potential, None, RunProgress(epoch=5, step=50))
    text = str(info.value)
    assert "Read-only file system" in text and "make the directory writable" in text
    assert "checkpoint of epoch 4" in text
    assert f"python -m jat.train --resume {tmp_path / 'run'}" in text
    assert checkpoint.read_progress(tmp_path / "run" / "last").epoch == 4
    run.release()


def test_non_finite_parameters_are_never_saved(tmp_path, potential):
    import jax

    bad = potential.with_params(jax.tree.map(lambda x: x * np.nan, potential.params))
    with pytest.raises(NonFiniteError, match="not finite"):
        checkpoint.save_checkpoint(tmp_path / "best", bad, None, RunProgress(epoch=1))
    assert not (tmp_path / "best").exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# progress and planning


def test_run_progress_round_trip_and_old_files():
    prog = RunProgress(epoch=3, step=30, elapsed=1.5, planned_epochs=9, best_score=0.25,
                       best_epoch=2, bad_epochs=1, stop_reason="patience")
    assert RunProgress.from_json(json.loads(json.dumps(prog.to_json()))) == prog
    old = {"epoch": 2, "step": 12, "elapsed": 3, "planned_epochs": 3, "best_score": 0.5,
           "best_epoch": 2, "bad_epochs": 0, "energy_shift_refit": True, "future_key": 1}
    read = RunProgress.from_json(old)
    assert read.stop_reason is None and not read.replanned and read.elapsed == 3.0
    with pytest.raises(ValueError, match="'epoch'"):
        RunProgress.from_json({"epoch": "3"})
    with pytest.raises(ValueError, match="stop_reason"):
        RunProgress(stop_reason="tired")


def test_stop_reasons():
    prog = RunProgress(epoch=5, planned_epochs=10, bad_epochs=2, elapsed=50.0)
    assert planning.stop_reason(prog, patience=2, budget=None, epoch_time=1.0) == "patience"
    assert planning.stop_reason(prog, patience=3, budget=None, epoch_time=1.0) is None
    assert planning.stop_reason(prog, patience=None, budget=60, epoch_time=11.0) == "time_budget"
    done = RunProgress(epoch=10, planned_epochs=10, elapsed=59.0)
    assert planning.stop_reason(done, None, budget=60, epoch_time=11.0) == "epochs"
    cut = planning.with_stop_reason(prog, None, 60, 11.0)
    assert "5 of the 10 planned epochs not run" in planning.describe_stop(cut, None)


def _rows_at(seconds: list[float]) -> list[dict]:
    return [{"epoch": k + 1, "epoch_time": t} for k, t in enumerate(seconds)]


def test_a_slowed_run_shortens_its_plan_to_end_the_schedule_in_the_budget():
    # planned 100 epochs of 1 s; from epoch 41 they take 2 s: 60 left need 120 s, 60 s remain
    rows = _rows_at([5.0] + [1.0] * 39 + [2.0] * 10)
    planned, note = planning.keep_on_time(rows, 100, remaining=60.0)
    assert planned == 50 + int(60.0 * planning.BUDGET_MARGIN / 2.0) == 79
    assert "shortening the plan to 79 epochs" in note and "2.00 s" in note
    # on time: the plan stands; late by one epoch: one epoch less
    assert planning.keep_on_time(rows, 100, remaining=100.0) == (100, None)
    assert planning.keep_on_time(rows, 80, remaining=61.0) == (80, None)
    assert planning.keep_on_time(rows, 80, remaining=59.0)[0] == 50 + int(59 * 0.97 / 2) == 78
    # faster epochs never lengthen it; nothing left to plan or nothing timed yet
    assert planning.keep_on_time(_rows_at([5.0] + [0.5] * 49), 100, 60.0) == (100, None)
    assert planning.keep_on_time(rows, 50, remaining=1.0) == (50, None)
    assert planning.keep_on_time(_rows_at([5.0]), 10, remaining=1.0) == (10, None)
    # at least one more epoch is planned when the budget is nearly spent
    assert planning.keep_on_time(rows, 100, remaining=0.5)[0] == 51


def test_resume_outlook_says_whether_the_schedule_fits():
    prog = RunProgress(epoch=40, planned_epochs=100, elapsed=400.0)
    fits = planning.resume_outlook(prog, budget=1000.0, per_epoch=9.0)
    assert "600 s left for the 60 remaining of 100 planned epochs" in fits
    assert "stop at the budget" not in fits
    slow = planning.resume_outlook(prog, budget=1000.0, per_epoch=20.0)
    assert "stop at the budget after about 30 more epochs" in slow
