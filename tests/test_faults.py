"""Real ``python -m jat.train`` processes killed at chosen moments, interrupted, and started
twice at once. Afterwards every run directory either resumes exactly (the same metrics as an
uninterrupted run) or is refused with a clear message, and ``jat.Potential.load`` works on every
``best/`` and ``last/`` that exists.

Kills inside checkpoint writes are placed deterministically with ``JAT_TEST_FAULT`` (see
:mod:`jat.atomic_io`); the random sequence of the slow test is seeded and printed, so a failure
is reproduced by its seed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

import jat
from jat.atomic_io import FAULT_ENV
from jat.config import config_from_dict, dump_config
from jat.training import train

ROOT = Path(__file__).resolve().parents[1]
TIME_KEYS = {"train_structures_per_s", "train_atoms_per_s", "train_time", "epoch_time", "elapsed"}
TIMEOUT = 300
REFUSED = ("is in use by a training process", "already holds a run; resume it with")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 rattled EMT Cu cells of 4 atoms (one batch shape: one compilation per process)."""
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(16):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    path = tmp_path_factory.mktemp("faults") / "cu.extxyz"
    write(path, frames)
    return path


def _config(data, epochs, **top):
    return config_from_dict(
        {
            "name": "f",
            "data": {"train": str(data), "split": {"validation": 4}},
            "model": {"name": "jat", "cutoff": 3.0, "layers": 1, "width": 8, "heads": 1},
            "training": {"epochs": epochs, "batch_size": 4},
            "logging": {"progress": "lines"},
            **top,
        }
    )


def _config_file(data, tmp_path, epochs, **top) -> Path:
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(dump_config(_config(data, epochs, **top)))
    return path


@pytest.fixture(scope="module")
def references(data, tmp_path_factory):
    """Uninterrupted runs (in this process), by number of epochs."""
    root = tmp_path_factory.mktemp("references")
    cache = {}

    def get(epochs):
        if epochs not in cache:
            cfg = _config(data, epochs, run_dir=str(root / f"e{epochs}"))
            cache[epochs] = _rows(train(cfg).run_dir)
        return cache[epochs]

    return get


def _env(fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop(FAULT_ENV, None)
    env.setdefault("JAT_HUGE_PAGES", "0")  # no re-exec: a second start-up per process
    if fault:
        env[FAULT_ENV] = fault
    cache = jax.config.jax_compilation_cache_dir  # shared with the test process (conftest)
    if cache:
        # read only: these processes are killed at random moments, and JAX writes an entry in
        # place, so a kill could leave a truncated entry that crashes whoever reads it next
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1e9"
    return env


def _popen(args: list[str], fault: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jat.train", *args],
        env=_env(fault),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    proc = _popen(args, fault)
    out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _rows(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_rows(a, b):
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ra.keys() - TIME_KEYS:
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-12), key


def _loadable(run: Path) -> None:
    """``Potential.load`` of the run (it recovers ``best/``), then of every checkpoint left."""
    if any((run / n).exists() for n in ("best", ".best.old", "last", ".last.old")):
        jat.Potential.load(run)
    for name in ("best", "last"):
        if (run / name).exists() or (run / f".{name}.old").exists():
            pot = jat.Potential.load(run / name)
            assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(pot.params))
    leftovers = [p.name for p in run.iterdir() if ".tmp-" in p.name or p.name.endswith(".old")]
    assert not leftovers, leftovers


# ---------------------------------------------------------------------------------------------
# fast


def test_concurrent_starts_get_their_own_directory_or_a_refusal(data, tmp_path, references):
    """Two starts with default names get two directories; two with the same run_dir: one runs
    (here killed right after claiming it), the other is refused. The claimed directory, killed
    before its first checkpoint, resumes from the beginning to the uninterrupted metrics."""
    default = _config_file(data, tmp_path, 3, output_dir=str(tmp_path / "out"))
    same = tmp_path / "same"
    explicit = _config_file(data, tmp_path, 3, run_dir=str(same))
    kill = "run:claimed@1=kill"
    procs = [_popen([str(default)], kill) for _ in range(2)]
    procs += [_popen([str(explicit)], kill) for _ in range(2)]
    done = [(p.wait(timeout=TIMEOUT), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in done[:2]] == [-signal.SIGKILL] * 2
    runs = sorted((tmp_path / "out").iterdir())
    assert len(runs) == 2 and all((r / "config.yaml").is_file() for r in runs)
    codes = sorted(code for code, _ in done[2:])
    assert codes == [-signal.SIGKILL, 2], done[2:]
    refusal = next(err for code, err in done[2:] if code == 2)
    assert any(text in refusal for text in REFUSED) and "Traceback" not in refusal
    assert f"--resume {same}" in refusal
    resumed = _run(["--resume", str(same)])
    assert resumed.returncode == 0, resumed.stderr
    assert "starting it again from the beginning" in resumed.stdout
    _same_rows(references(3), _rows(same))
    _loadable(same)


def test_kill_between_the_renames_of_best_recovers_and_resumes_exactly(
    data, tmp_path, references
):
    """Killed in epoch 2 after the old ``best/`` was moved aside and before the new one took its
    place (the first write of ``best/`` replaces nothing, so this is its first such moment):
    ``Potential.load(run_dir)`` used to fail, and ``--resume`` made ``best/`` the last epoch
    while the summary named the real best epoch."""
    run = tmp_path / "run"
    config = _config_file(data, tmp_path, 3, run_dir=str(run))
    killed = _run([str(config)], "write:best:moved-aside@1=kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run / "best").exists() and (run / ".best.old").is_dir()
    _loadable(run)
    assert json.loads((run / "best" / "progress.json").read_text())["epoch"] == 1
    resumed = _run(["--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    _same_rows(references(3), _rows(run))
    summary = json.loads((run / "summary.json").read_text())
    best = json.loads((run / "best" / "progress.json").read_text())
    assert summary["best_epoch"] == best["epoch"]
    _loadable(run)


def test_ctrl_c_during_the_first_compilation_stops_cleanly(data, tmp_path):
    """SIGINT while the training step compiles: exit 130 with the real run directory in the
    message (it printed the literal RUN_DIR), no crash, and a directory that resumes."""
    run = tmp_path / "run"
    config = _config_file(data, tmp_path, 3, run_dir=str(run))
    proc = _popen([str(config)])
    for line in proc.stdout:
        if line.startswith("model:"):  # set-up done; the first step compiles next
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "RUN_DIR" not in err
    assert f"python -m jat.train --resume {run}" in err
    assert "interrupted (SIGINT)" in err
    assert (run / "config.yaml").is_file()


# ---------------------------------------------------------------------------------------------
# slow: a seeded sequence of kills at random moments

FAULT_POINTS = (
    "train:step",
    "run:row",
    "train:epoch",
    "write:best:files",
    "write:best:moved-aside",
    "write:best:swapped",
    "write:last:files",
    "write:last:moved-aside",
    "write:last:swapped",
)


# one seeded sequence in the normal suite; JAT_FAULT_SEEDS=0,1,2 (any list) runs more of them
SEEDS = [int(s) for s in os.environ.get("JAT_FAULT_SEEDS", "0").split(",")]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_random_kills_always_leave_a_resumable_run(data, tmp_path, references, seed):
    """Up to six processes in a row, each killed at a point drawn from ``FAULT_POINTS`` (the
    N-th passage in that process) or, once, after a random delay; after each, the directory is
    checked, and at the end its resumed metrics must equal the uninterrupted run's."""
    epochs = 6
    rng = random.Random(seed)
    run = tmp_path / "run"
    config = _config_file(data, tmp_path, epochs, run_dir=str(run))
    args = [str(config)]
    history = []
    for attempt in range(6):
        if (run / "summary.json").exists():
            break
        if attempt == 2:  # one kill at a random time rather than at a named point
            proc = _popen(args)
            delay = rng.uniform(2.0, 7.0)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()
            proc.communicate(timeout=TIMEOUT)
            history.append(f"SIGKILL after {delay:.1f} s: {proc.returncode}")
        else:
            point = rng.choice(FAULT_POINTS)
            count = rng.randint(1, 4 if point == "train:step" else 2)
            result = _run(args, f"{point}@{count}=kill")
            history.append(f"{point}@{count}: {result.returncode}")
            assert result.returncode in (0, -signal.SIGKILL), (history, result.stderr)
        if run.exists():
            _loadable(run)
            if attempt == 0:
                fresh = _run([str(config)])
                assert fresh.returncode == 2 and "--resume" in fresh.stderr, history
            args = ["--resume", str(run)]
    print(f"seed {seed}:", "; ".join(history))
    final = _run(["--resume", str(run)])
    assert final.returncode == 0, (history, final.stderr)
    done = final.stdout
    assert "is complete" in done or "best model saved" in done, history
    _same_rows(references(epochs), _rows(run))
    _loadable(run)
