"""Smoke tests of the model-comparison benchmarks (benchmarks/accuracy_vs_time.py, throughput.py,
scaling.py): they import, parse their options, and their cheapest pieces run on tiny synthetic
input. The measurements themselves are run by hand (see each script's docstring)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from jat.data.structure import Structure
from jat.training.steps import LossSpec

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ("accuracy_vs_time", "throughput", "scaling")


@pytest.fixture(scope="module")
def bench():
    """The three benchmark modules and their shared helpers, imported as the scripts are run."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in ("_common", *SCRIPTS)}
    finally:
        sys.path.remove(str(BENCHMARKS))


def _box(n_pairs: int = 2, seed: int = 0) -> tuple[Atoms, list[Structure]]:
    """A small periodic box of random H/C/N/O atoms and two labelled copies as Structures."""
    rng = np.random.default_rng(seed)
    side = 6.0
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = grid[: 5 * n_pairs] * side / 3 + rng.uniform(-0.2, 0.2, (5 * n_pairs, 3))
    symbols = list(rng.choice(["H", "C", "N", "O"], size=len(positions)))
    atoms = Atoms(symbols, positions=positions, cell=np.eye(3) * side, pbc=True)
    structures = [
        Structure(
            tuple(symbols),
            positions + rng.normal(0, 0.05, positions.shape),
            np.eye(3) * side,
            (True, True, True),
            energy=float(rng.normal()),
            forces=rng.normal(size=positions.shape),
        )
        for _ in range(2)
    ]
    return atoms, structures


def test_benchmarks_cheapest_pieces(bench, tmp_path):
    common = bench["_common"]
    atoms, structures = _box()
    # every script parses its options; accuracy_vs_time builds and cross-checks its three configs
    for name in SCRIPTS:
        with pytest.raises(SystemExit) as exit_info:
            bench[name].main(["--help"])
        assert exit_info.value.code == 0
    acc = bench["accuracy_vs_time"]
    configs = {
        n: acc.make_config(n, tmp_path / "ean.jsonl", 30.0, 0, tmp_path / "runs", quick=False)
        for n in ("jat", "schnet", "bessel")
    }
    acc.check_same_protocol(configs)
    assert configs["bessel"].model.cutoff == 3.5
    assert dict(configs["jat"].model.hyper) == {"layers": 7, "width": 48, "heads": 1}
    assert configs["schnet"].training.time_budget == 30.0

    # throughput: one inference pass and one training epoch of a tiny model
    pot = common.TINY["jat"].create()
    inf = bench["throughput"].inference(pot, [atoms, atoms], batch=2, repeats=1)
    assert inf["structures"] == 2 and inf["structures_per_s"] > 0
    data, train = bench["throughput"].training(pot, structures, 2, LossSpec(), epochs=1)
    assert train["structures"] == 2 and train["structures_per_s"] > 0

    # scaling: neighbour list and the exponent fit
    nl = bench["scaling"].neighbour_list(atoms, 3.0, repeats=1)
    assert nl["n_atoms"] == len(atoms) and nl["n_edges"] > 0
    assert common.fit_exponent([100, 200, 400], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert common.fit_exponent([100], [1.0]) is None


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_help_subprocess(script):
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "--quick" in out.stdout and "--data-dir" in out.stdout


def test_committee_benchmark_pieces():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        committee = importlib.import_module("committee")
    finally:
        sys.path.remove(str(BENCHMARKS))
    import jat

    atoms, structures = _box()
    kwargs = {"features": 8, "interactions": 1}
    single = jat.Potential.create("schnet", committee.SPECIES, committee.CUTOFF, **kwargs)
    com = jat.Potential.create("schnet", committee.SPECIES, committee.CUTOFF, members=2,
                               **kwargs)
    calls = committee.inference_calls(single, com, atoms)
    for model_call, compute_call, energy_call, mean_forces_call in calls.values():
        model_call()
        compute_call()
        energy_call()
        mean_forces_call()
    assert compute_call().energy_std is not None
    for pot in (single, com):
        assert committee.training_epochs(pot, structures, 2)() > 0


def _script_json(args: list[str], **env) -> tuple[int, dict, str]:
    """Run a benchmark script; its exit code, the JSON of its last line and its stderr."""
    import json
    import os

    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCHMARKS.parent,
        env={**os.environ, "JAT_HUGE_PAGES": "0", "PYTHONPATH": str(BENCHMARKS.parent), **env},
    )
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else {}, proc.stderr


def test_device_check_without_a_gpu_says_so_and_fails():
    code, out, err = _script_json([str(BENCHMARKS / "device_check.py")], JAX_PLATFORMS="cpu")
    assert code == 1 and "no GPU" in err
    assert out["ok"] is False and out["gpu"] is False


@pytest.mark.slow
def test_device_check_tiny_on_the_cpu():
    code, out, err = _script_json(
        [str(BENCHMARKS / "device_check.py"), "--allow-cpu", "--no-tests"], JAX_PLATFORMS="cpu"
    )
    assert code == 0, (out, err[-2000:])
    assert out["tiny"] and out["ean_jat"]["train"]["structures_per_s"] > 0
    assert out["md_jat_225"]["ms_per_step"] > 0


@pytest.mark.slow
def test_data_parallel_benchmark_quick():
    code, out, err = _script_json(
        [str(BENCHMARKS / "data_parallel.py"), "--quick", "--repeats", "1"], JAX_PLATFORMS="cpu"
    )
    assert code == 0, err[-2000:]
    assert out["devices"] == 2 and set(out["structures_per_s"]) == {"1", "2"}
    assert out["ratio"] > 0
