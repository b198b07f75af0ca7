"""Shared pieces of the model-comparison benchmarks (accuracy_vs_time, throughput, scaling).

Not a script. The benchmarks import it as ``_common`` (they are run as
``python benchmarks/<name>.py``, which puts this directory on ``sys.path``).

- :data:`MODELS`: JAT, SchNet and the NeuralIL-style Bessel baseline at their EAN reference
  settings; :data:`TINY`: small versions of the same for ``--quick`` smoke runs.
- :func:`add_common_arguments` / :func:`resolve_dirs`: ``--data-dir``, ``--out``, ``--quick``.
- :class:`TrainingStep`: the compiled training step of ``python -m jat.train``
  (:func:`jat.training.steps.train_step` over :func:`jat.training.dataset.build_dataset`
  buckets, Adam with clipping, EMA), as ``benchmarks/training.py`` times it.
- timing, memory, JSON and plotting helpers.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jat
from jat.data import data_dir
from jat.plotting import pyplot, save_figure  # noqa: F401 - the benchmarks' plots
from jat.runtime import freed_memory_kept, huge_pages_enabled
from jat.training import optim, steps
from jat.training.dataset import Dataset, build_dataset, choose_buckets
from jat.training.splits import fit_energy_reference

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SPECIES = ("H", "C", "N", "O")
EAN_FILE = Path("ean") / "ean_15pairs_dft.jsonl"
ANI1_FILES = (Path("ani1") / "ani_gdb_s01.h5", Path("ani1") / "ani_gdb_s02.h5")
ORDER = ("jat", "schnet", "bessel")
LABELS = {"jat": "JAT", "schnet": "SchNet", "bessel": "Bessel (NeuralIL-style)"}
COLORS = {"jat": "tab:blue", "schnet": "tab:orange", "bessel": "tab:green"}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model name, its cutoff (Å) and hyperparameters."""

    model: str
    cutoff: float
    hyper: dict[str, Any]

    def create(self, species: Sequence[str] = SPECIES, seed: int = 0) -> jat.Potential:
        return jat.Potential.create(self.model, species, self.cutoff, seed=seed, **self.hyper)

    def config(self) -> dict[str, Any]:
        """The ``model`` section of a training configuration."""
        hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hyper.items()}
        return {"name": self.model, "cutoff": self.cutoff, **hyper}


# EAN reference settings: JAT as in the thesis (examples/ean.yaml), SchNet as in its paper,
# the Bessel baseline as NeuralIL for EAN (examples/ean_bessel.yaml).
MODELS = {
    "jat": ModelSpec("jat", 5.0, {"layers": 7, "width": 48, "heads": 1}),
    "schnet": ModelSpec("schnet", 5.0, {"features": 64, "interactions": 3}),
    "bessel": ModelSpec("bessel", 3.5, {"n_max": 4, "embed_dim": 2, "widths": (64, 32, 16)}),
}
# --quick: the same models, small enough to compile and run in seconds (same cutoffs).
TINY = {
    "jat": ModelSpec("jat", 5.0, {"layers": 2, "width": 16, "heads": 1}),
    "schnet": ModelSpec("schnet", 5.0, {"features": 16, "interactions": 1}),
    "bessel": ModelSpec("bessel", 3.5, {"n_max": 2, "embed_dim": 2, "widths": (16, 8)}),
}


def model_specs(names: str | Sequence[str], quick: bool) -> dict[str, ModelSpec]:
    """``{name: spec}`` for comma-separated ``names`` (reference or, with ``quick``, tiny)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    table = TINY if quick else MODELS
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(table)}")
    return {n: table[n] for n in names}


# ---------------------------------------------------------------------------------------------
# command line, files


def ints(text: str) -> list[int]:
    """A comma-separated list of integers (an argparse type)."""
    return [int(x) for x in text.split(",") if x.strip()]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="reference data directory (default: jat.data.data_dir(), i.e. $JAT_DATA_DIR or "
        "../shared/data)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help=f"directory for the PNG and JSON results, created (default: {RESULTS})",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny settings")


def resolve_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(data directory, output directory); the output directory is created."""
    root = data_dir(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    return root, args.out


def require(path: Path) -> Path:
    if not path.is_file():
        raise SystemExit(f"data not found at {path}; set JAT_DATA_DIR or pass --data-dir")
    return path


def result_stem(name: str, quick: bool) -> str:
    """File stem of a benchmark's outputs; quick runs never overwrite real results."""
    return f"{name}-quick" if quick else name


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def environment() -> dict[str, Any]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count()
    return {
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "usable_cores": cores,
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "huge_pages": huge_pages_enabled(),
        "freed_memory_kept": freed_memory_kept(),
    }


def describe_environment(env: dict[str, Any]) -> str:
    return (
        f"{env['processor']}, {env['usable_cores']}/{env['cpu_count']} usable CPU cores, "
        f"jax {env['jax']} on {env['device']}"
        + (", huge pages" if env.get("huge_pages") else "")
        + (", freed memory kept" if env.get("freed_memory_kept") else "")
    )


# ---------------------------------------------------------------------------------------------
# timing and memory


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bare_energy_forces(pot: jat.Potential, atoms: Any) -> tuple[Callable[[], Any], int]:
    """A blocking call of the compiled energy + forces of ``pot`` alone, in its dtype, on a
    fixed, precomputed graph (:meth:`jat.Potential.graph`, already on the device) through the
    predictor every evaluation path uses: the floor a full evaluation or an MD step cannot beat.
    Returns (call, number of edges)."""
    from jat.dtypes import precision
    from jat.predictor import predict

    with precision(pot.dtype):
        g = pot.graph(atoms)
        params, scale = pot.device_constants()
        fn = jax.jit(functools.partial(predict, pot.energy_model, forces=True))

        def call():
            with precision(pot.dtype):
                return jax.block_until_ready(fn(params, scale, g))

    return call, int(np.asarray(g.edge_mask).sum())


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def n_params(params: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def fit_exponent(n_atoms: Sequence[float], seconds: Sequence[float]) -> float | None:
    """Slope of log(seconds) against log(n_atoms) by least squares (None below two sizes)."""
    if len(n_atoms) < 2 or len(set(n_atoms)) < 2:
        return None
    return float(np.polyfit(np.log(n_atoms), np.log(seconds), 1)[0])


def fmt(value: float | None, spec: str = ".2f", width: int = 0) -> str:
    text = "—" if value is None or not math.isfinite(value) else format(value, spec)
    return text.rjust(width)


# ---------------------------------------------------------------------------------------------
# training step


class TrainingStep:
    """The compiled training step of ``python -m jat.train`` over bucketed, padded batches.

    ``structures`` are bucketed into at most ``max_buckets`` atom counts (as a run does),
    neighbour lists built once; the step is :func:`jat.training.steps.train_step` with Adam
    (clip 10) and EMA 0.99, jitted with the state donated. Energy reference fitted as in a run.
    The potential's parameters are copied, so ``pot`` stays usable after training steps.
    ``data``: the ``.data`` of an earlier instance on the same structures and cutoff (skips
    building the neighbour lists again).
    """

    def __init__(
        self,
        pot: jat.Potential,
        structures: Sequence[Any],
        batch_size: int,
        loss: steps.LossSpec,
        max_buckets: int = 4,
        data: Dataset | None = None,
    ):
        self.batch_size = batch_size
        self.n_structures = len(structures)
        self.n_atoms = int(sum(s.n_atoms for s in structures))
        forces = loss.forces_weight > 0
        shift, scale = fit_energy_reference(structures, pot.species, forces_trained=forces)
        if data is None:  # else a Dataset of the same structures built by a previous instance
            bounds = choose_buckets([s.n_atoms for s in structures], max_buckets)
            data = build_dataset(structures, pot.species, pot.cutoff, shift, bounds)
        self.data = data
        tx = optim.optimizer("adam", 0.0, 10.0)
        self.step = steps.compiled_train_step(pot.energy_model, tx, loss, 0.99)
        self.state = steps.initial_state(pot.params, tx)
        self.scale = jnp.full(len(pot.species), scale, jnp.float32)
        self.lr = np.float32(1e-4)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [b.shape for b in self.data.buckets]

    def compile(self) -> float:
        """One step on a batch of every bucket (one compilation each); seconds."""
        t0 = time.perf_counter()
        for bucket in self.data.buckets:
            rows = np.arange(min(self.batch_size, len(bucket)))
            batch = bucket.batch(rows, self.batch_size, jnp.float32)
            self.state, m = self.step(self.state, self.scale, batch, self.lr)
            jax.block_until_ready(m)
        return time.perf_counter() - t0

    def epoch(self, seed: int) -> float:
        """One shuffled pass over all structures, batches assembled on the host as in a run,
        no synchronisation until the end; seconds."""
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        m = None
        for _, batch in self.data.iterate(self.batch_size, jnp.float32, rng):
            self.state, m = self.step(self.state, self.scale, batch, self.lr)
        jax.block_until_ready(m)
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# plots
