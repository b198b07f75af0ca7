"""Terminal progress: a tqdm bar on a terminal, plain lines otherwise, nothing in none mode."""

from __future__ import annotations

import io

import pytest

from jat.training.progress import Progress, describe

ROW = {
    "epoch": 1,
    "train_loss": 0.5,
    "val_forces_mae": 0.1,
    "lr": 1e-3,
    "train_structures_per_s": 10.0,
    "epoch_time": 1.5,
    "best": True,
}
LINE = "epoch 1/2  loss 0.5  val F MAE 0.1000 eV/Å  lr 1.00e-03  10.0 structures/s  1.5 s  *"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(progress: Progress) -> None:
    progress.message("start")
    for k in range(4):
        progress.step(1, 2, k + 1, 4)
    progress.message("during")
    progress.epoch(ROW, 2)


def test_lines_mode_and_auto_off_a_terminal():
    for mode in ("lines", "auto"):
        stream = io.StringIO()
        progress = Progress(mode, stream)
        assert progress.mode == "lines"
        _run(progress)
        assert stream.getvalue() == f"start\nduring\n{LINE}\n"  # no bar, no carriage returns


def test_none_mode_is_silent():
    stream = io.StringIO()
    _run(Progress("none", stream))
    assert stream.getvalue() == ""


def test_bar_on_a_terminal():
    stream = _Terminal()
    progress = Progress("auto", stream)
    assert progress.mode == "bar"
    _run(progress)
    text = stream.getvalue()
    assert "epoch 1/2:" in text and "4/4" in text  # the tqdm bar
    lines = text.split("\n")
    assert lines[0] == "start" and lines[-1] == ""
    assert lines[-2].split("\r")[-1] == LINE  # the bar cleared, then the epoch's line
    assert "during" in text


def test_bad_mode():
    with pytest.raises(ValueError, match="progress mode"):
        Progress("fancy")


def test_describe():
    metrics = {"forces_mae": 0.01, "forces_rmse": 0.02}
    assert describe(metrics) == "force MAE 0.0100 eV/Å (RMSE 0.0200)"
    assert describe({}) == "no labels"
