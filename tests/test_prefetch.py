"""jat.training.prefetch: batches made ahead in a background thread, in order, errors where
they happened, and no thread left behind."""

import contextlib
import threading
import time

import numpy as np
import pytest
from conftest import rattled_copper_file

from jat.config import config_from_dict
from jat.training import train
from jat.training.prefetch import prefetched
from jat.training.trainer import Trainer


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "jat-prefetch"]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_results_come_in_order(depth):
    assert list(prefetched(lambda x: x * x, range(20), depth)) == [x * x for x in range(20)]
    assert not _workers()


def test_results_are_made_ahead_up_to_depth():
    made = []

    def make(x):
        made.append(x)
        return x

    with contextlib.closing(prefetched(make, range(10), 2)) as results:
        assert next(results) == 0
        time.sleep(0.3)  # the worker fills the queue, then waits
        # 0 taken, 1 and 2 queued, 3 made and waiting for room
        assert made == [0, 1, 2, 3]
    assert not _workers()


def test_an_error_is_raised_at_the_item_that_raised_it():
    def make(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in prefetched(make, range(10), 2):
            got.append(value)
    assert got == [0, 1, 2]
    assert not _workers()


def test_an_error_of_the_items_is_raised_too():
    def items():
        yield 1
        raise KeyError("no more items")

    with pytest.raises(KeyError, match="no more items"):
        list(prefetched(lambda x: x, items(), 1))


def test_closing_early_stops_the_worker():
    with contextlib.closing(prefetched(lambda x: x, range(10**6), 2)) as results:
        for value in results:
            if value == 5:
                break
    assert not _workers()


def test_a_consumer_error_stops_the_worker():
    with pytest.raises(RuntimeError, match="stop"):  # noqa: PT012 - the loop is the point
        with contextlib.closing(prefetched(lambda x: x, range(10**6), 2)) as results:
            for value in results:
                if value == 2:
                    raise RuntimeError("stop")
    assert not _workers()


def test_depth_is_checked():
    with pytest.raises(ValueError, match="depth must be >= 0"):
        list(prefetched(lambda x: x, range(3), -1))
    with pytest.raises(Exception, match="training.prefetch"):
        config_from_dict({"training": {"prefetch": -1}})
    assert config_from_dict({}).training.prefetch == 2


def test_a_float64_run_trains_on_float64_batches(tmp_path, monkeypatch):
    """``jax.enable_x64`` holds per thread: the prefetching thread must make float64 batches."""
    data = rattled_copper_file(tmp_path, 6)
    seen = []
    original = Trainer.step

    def step(self, state, bucket, rows, batch, lr):
        seen.append((batch.graph.positions.dtype, batch.forces.dtype))
        return original(self, state, bucket, rows, batch, lr)

    monkeypatch.setattr(Trainer, "step", step)
    cfg = config_from_dict({
        "run_dir": str(tmp_path / "run"),
        "data": {"train": str(data), "split": {"validation": 2}},
        "model": {"name": "jat", "cutoff": 3.0, "layers": 1, "width": 8, "heads": 1,
                  "dtype": "float64"},
        "training": {"epochs": 1, "batch_size": 2},
        "logging": {"progress": "none"},
    })
    train(cfg)
    assert seen and all(d == (np.float64, np.float64) for d in seen), seen
