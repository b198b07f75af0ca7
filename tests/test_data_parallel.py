"""Data-parallel training: one global batch split by structure over devices and processes gives
the single-device result.

Simulated CPU devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX is
imported, so those checks run in subprocesses; so do the real two-process runs (two ``python -m
jat.train`` processes joined on 127.0.0.1). Compared in float32 to 1e-5 relative: the loss at
every one of 50 steps with 1, 2 and 4 devices, the evaluation sums, the metrics of a whole run
on 2 processes, and a resume on 1 process of a checkpoint a 2-process run wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from jat.atomic_io import FAULT_ENV
from jat.config import ConfigError, config_from_dict, dump_config
from jat.training import train
from jat.training.parallel import resolve_devices

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600
RTOL = 1e-5
TIME_KEYS = {"train_structures_per_s", "train_atoms_per_s", "train_time", "epoch_time", "elapsed"}
TINY = {"name": "jat", "cutoff": 3.0, "layers": 1, "width": 8, "heads": 1}

# 50 Adam steps of the same batches (one shape: 4- and 8-atom cells padded to 8; 22 structures in
# batches of 8, so the last batch has 6 and, on 4 devices, one part only fill) with 1, 2 and 4
# devices; prints the loss of every step and the evaluation sums of the final parameters. At
# lr 1e-4 the float32 trajectories agree to ~3e-7; at 2e-3 the rounding differences of the
# summation order grow to ~2e-4 over 50 steps (Adam amplifies them), which is not a bug.
STEPS_WORKER = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
import jat
from jat.data.structure import Structure
from jat.training import optim, parallel, steps
from jat.training.dataset import build_dataset, choose_buckets

n_steps, batch, lr = int(sys.argv[1]), int(sys.argv[2]), np.float32(sys.argv[3])
rng = np.random.default_rng(0)
structures = []
for k in range(22):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    if k % 2:
        atoms = atoms.repeat((2, 1, 1))
    atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
    atoms.calc = EMT()
    structures.append(Structure(tuple(atoms.get_chemical_symbols()), atoms.positions,
        np.asarray(atoms.cell), (True,) * 3, energy=float(atoms.get_potential_energy()),
        forces=atoms.get_forces()))
species = ("Cu",)
pot = jat.Potential.create("jat", species, 3.0, seed=0, layers=1, width=8, heads=1)
data = build_dataset(structures, species, 3.0, np.zeros(1),
                     choose_buckets([s.n_atoms for s in structures], 1))
order = [bb for e in range(n_steps) for bb in data.batches(batch, np.random.default_rng([0, e]))]
order = order[:n_steps]
tx = optim.optimizer("adam", 0.0, 10.0)
spec = steps.LossSpec(forces_weight=1.0, energy_weight=0.1)
scale = jnp.asarray(pot.energy_scale, jnp.float32)
model = pot.energy_model
out = {}
for d in (1, 2, 4):
    dp = parallel.data_parallel(d, batch)
    state = steps.initial_state(pot.params, tx)
    if dp is None:
        step = steps.compiled_train_step(model, tx, spec, 0.99)
        evaluate = jax.jit(lambda p, s, b: steps.eval_step(model, spec, True, p, s, b))
        make = lambda b, rows: data.buckets[b].batch(rows, batch, jnp.float32)
        sc = scale
    else:
        step = parallel.compiled_train_step(dp, model, tx, spec, 0.99)
        evaluate = parallel.compiled_eval_step(dp, model, spec, True)
        make = lambda b, rows: parallel.sharded_batch(dp, data.buckets[b], rows, batch,
                                                      jnp.float32)
        state, sc = parallel.replicate(dp, state), parallel.replicate(dp, scale)
    losses = []
    for k, (b, rows) in enumerate(order):
        state, m = step(state, sc, make(b, rows), lr)
        m = parallel.host_copy(m)
        losses.append(float(m["loss"] / m["weight"]))
    sums = [parallel.host_copy(evaluate(state.params, sc, make(b, rows)))
            for b, rows in data.batches(batch)]
    total = {k: float(sum(float(s[k]) for s in sums)) for k in sums[0]}
    out[d] = {"losses": losses, "eval": total, "devices": 0 if dp is None else dp.size}
print(json.dumps(out))
"""


def _env(
    devices: int | None = None, fault: str | None = None, processes: int = 1
) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop(FAULT_ENV, None)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("JAT_HUGE_PAGES", "0")  # no re-exec: a second start-up per process
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if fault:
        env[FAULT_ENV] = fault
    cache = jax.config.jax_compilation_cache_dir  # the test process's (conftest)
    if cache:
        # JAX leaves the simulated device count out of its cache key, and an executable written
        # by a process with another count can crash the one that loads it: one directory per
        # count. Processes that may be killed only read (JAX writes entries in place).
        count = devices or 1
        tag = "" if count == 1 and processes == 1 else f"-devices{count}-processes{processes}"
        env["JAX_COMPILATION_CACHE_DIR"] = f"{cache}{tag}"
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1e9" if fault else "0"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ra.keys() - TIME_KEYS - {"best"}:
            assert ra[key] == pytest.approx(rb[key], rel=RTOL, abs=1e-9), key


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 rattled EMT Cu cells: 4 atoms and 8 atoms (two batch shapes)."""
    rng = np.random.default_rng(1)
    frames = []
    for k in range(16):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        if k % 4 == 0:
            atoms = atoms.repeat((2, 1, 1))
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    path = tmp_path_factory.mktemp("dp") / "cu.extxyz"
    write(path, frames)
    return path


def _config(data, run_dir, epochs=3, **training):
    return config_from_dict(
        {
            "name": "dp",
            "run_dir": str(run_dir),
            "data": {"train": str(data), "split": {"validation": 4}},
            "model": dict(TINY),
            "training": {"epochs": epochs, "batch_size": 4, **training},
            "logging": {"progress": "none"},
        }
    )


# ---------------------------------------------------------------------------------------------
# the option


def test_resolve_devices():
    assert resolve_devices("auto", 8, 4, 1) == 4
    assert resolve_devices(2, 8, 4, 1) == 2
    assert resolve_devices(1, 6, 4, 2) == 1
    with pytest.raises(ValueError, match=r"training.devices = 8, but this process sees only 4"):
        resolve_devices(8, 8, 4, 1)
    with pytest.raises(ValueError, match=r"training.batch_size = 6 .* not a multiple of the 4"):
        resolve_devices("auto", 6, 4, 1)
    with pytest.raises(ValueError, match=r"2 per process × 2 processes"):
        resolve_devices(2, 6, 2, 2)


@pytest.mark.parametrize("value", [0, -1, "all", 1.5, True])
def test_bad_devices_values_are_config_errors(value):
    with pytest.raises(ConfigError, match="training.devices"):
        config_from_dict({"training": {"devices": value}})


def test_devices_values_and_default():
    assert config_from_dict({}).training.devices == "auto"
    assert config_from_dict({"training": {"devices": 2}}).training.devices == 2
    assert config_from_dict({"training": {"devices": "auto"}}).training.devices == "auto"
    assert "devices: auto" in dump_config(config_from_dict({}))


def test_more_devices_than_available_is_a_clear_error(data, tmp_path):
    n = jax.local_device_count()
    with pytest.raises(ValueError, match=rf"training.devices = {n + 1}, but this process sees"):
        train(_config(data, tmp_path / "run", devices=n + 1))
    assert not (tmp_path / "run" / "config.yaml").exists()  # the claim was undone


def test_process_flags_go_together_and_cluster_launches_are_detected(capsys):
    from jat.train import main
    from jat.training.distributed import cluster_launch, initialize

    with pytest.raises(SystemExit) as info:
        main(["--coordinator", "127.0.0.1:1234"])
    assert info.value.code == 2
    assert "--coordinator, --num-processes and --process-id go together" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--process-id 2 must be in 0…1"):
        initialize("127.0.0.1:1234", 2, 2)
    assert initialize("127.0.0.1:1234", 1, 0) is False  # one process: nothing to join
    assert cluster_launch({"SLURM_NTASKS": "4", "SLURM_PROCID": "1"})
    assert not cluster_launch({"SLURM_NTASKS": "1"}) and not cluster_launch({})
    assert cluster_launch({"OMPI_COMM_WORLD_SIZE": "2"})


# ---------------------------------------------------------------------------------------------
# simulated devices


def test_fifty_steps_on_1_2_and_4_devices_give_the_single_device_losses():
    out = subprocess.run(
        [sys.executable, "-c", STEPS_WORKER, "50", "8", "1e-4"],
        env=_env(devices=4),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert [result[d]["devices"] for d in ("1", "2", "4")] == [0, 2, 4]
    one = result["1"]
    assert len(one["losses"]) == 50
    for d in ("2", "4"):
        np.testing.assert_allclose(result[d]["losses"], one["losses"], rtol=RTOL)
        for key, value in one["eval"].items():
            assert result[d]["eval"][key] == pytest.approx(value, rel=RTOL), (d, key)


@pytest.mark.slow
def test_a_run_on_2_simulated_devices_matches_one_device(data, tmp_path):
    reference = _rows(train(_config(data, tmp_path / "one", devices=1)).run_dir)
    path = tmp_path / "two.yaml"
    path.write_text(dump_config(_config(data, tmp_path / "two", devices=2)))
    out = subprocess.run(
        [sys.executable, "-m", "jat.train", str(path)],
        env=_env(devices=2),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    _same_rows(_rows(tmp_path / "two"), reference)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["compilations"]["train"] == 2  # once per batch shape


# ---------------------------------------------------------------------------------------------
# two processes


def _two_processes(
    args: list[str], fault: str | None = None, faults: tuple[str | None, ...] | None = None
) -> list[subprocess.CompletedProcess]:
    """Two ``python -m jat.train`` processes joined on 127.0.0.1; ``fault`` for both, or
    ``faults`` per process (``JAT_TEST_FAULT``)."""
    faults = faults or (fault, fault)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jat.train",
                *args,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(k),
            ],
            env=_env(fault=faults[k], processes=2),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    done = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


@pytest.mark.slow
def test_two_processes_match_one_and_resume_on_two_and_on_one(data, tmp_path):
    reference = _rows(train(_config(data, tmp_path / "one")).run_dir)
    run = tmp_path / "two"
    path = tmp_path / "two.yaml"
    path.write_text(dump_config(_config(data, run)))
    # both processes get SIGINT after their first epoch: they stop together, its checkpoint kept;
    # then --resume on two processes (one more epoch) and on one (to the end)
    for args, epochs in (([str(path)], 1), (["--resume", str(run)], 2)):
        first, second = _two_processes(args, fault="train:epoch@1=sigint")
        assert first.returncode == 130, first.stderr[-4000:]
        assert second.returncode == 130, second.stderr[-4000:]
        assert "interrupted" in first.stderr
        _same_rows(_rows(run), reference[:epochs])
    result = train(resume=run)  # one process, one device
    _same_rows(_rows(run), reference)
    assert result.summary["epochs"] == 3


@pytest.mark.slow
def test_process_0_refusing_the_run_directory_stops_the_other(data, tmp_path):
    run = tmp_path / "taken"
    run.mkdir()
    (run / "config.yaml").write_text("name: other\n")  # another run's directory
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(_config(data, run)))
    first, second = _two_processes([str(path)])
    assert first.returncode == 2 and "already holds a run" in first.stderr
    assert second.returncode != 0 and "process 0 failed" in second.stderr


@pytest.mark.slow
def test_a_process_that_dies_does_not_leave_the_other_hanging(data, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(_config(data, tmp_path / "run", epochs=20)))
    t0 = time.monotonic()
    first, second = _two_processes([str(path)], faults=(None, "train:step@3=kill"))
    assert second.returncode == -9
    assert first.returncode != 0  # process 0 stopped too, with an error
    assert time.monotonic() - t0 < TIMEOUT
