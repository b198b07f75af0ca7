"""Streaming training data: peak memory at 100 000 and 1 000 000 conformations, and the training
throughput of per-batch neighbour lists against stored (in-memory) ones.

    python benchmarks/streaming.py [--data-dir DIR] [--sizes 100000,1000000] [--batch 128]
                                   [--steps 30] [--rounds 3] [--quick]

The conformations are synthetic and ANI-1-like: the 61 762 conformations of ANI-1's
``ani_gdb_s01.h5`` and ``ani_gdb_s02.h5`` (2–8 atoms, H C N O) perturbed at run time by
N(0, 0.05 Å) per coordinate, seeded by the conformation's number, with labels that need not be
physical (energy: the ANI-1 energy plus the harmonic energy of the perturbation, forces: its
harmonic force). They come from a lazy sequence, one at a time, so only the training layout
holds them: this measures what ``training.neighbor_lists: per_batch`` keeps (species int8,
positions and forces float32, no edges) and its device-built batches.

Each measurement runs in its own process (peak RSS is per process, ``ru_maxrss``):

- ``per_batch`` at every ``--sizes`` entry: build time, peak RSS and RSS before the data
  (Python, JAX, the compiled step), and training throughput;
- ``compare`` at the smallest size: stored and per-batch layouts of the same conformations in
  one process, timed in interleaved rounds (``--rounds`` × ``--steps`` steps of each) of the
  training step of ``python -m jat.train`` (JAT 2 × 32, forces and energy, batch ``--batch``).

- ``command`` (unless ``--no-command``): the whole ``python -m jat.train`` at every size, on an
  ANI-1-format HDF5 file of the same synthetic conformations (energies only, as ANI-1 has; written
  to a temporary directory first): peak RSS of the training process (reading, split, energy
  reference, packing, training, checkpoints) and its training throughput; at the smallest size
  also with ``training.neighbor_lists=stored``, the in-memory baseline.

Targets (issue 13): at 1 000 000 conformations peak RSS ≤ 4 GB and ≤ 1.5× that at 100 000;
per-batch throughput ≥ 80 % of the in-memory (stored) throughput. The last line is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

SPECIES = ("H", "C", "N", "O")
CUTOFF = 5.0
MODEL = {"layers": 2, "width": 32, "heads": 1}
NOISE = 0.05  # Å
SPRING = 10.0  # eV/Å², the synthetic labels' harmonic constant
RSS_TARGET_GB, RSS_RATIO_TARGET, THROUGHPUT_TARGET = 4.0, 1.5, 0.8


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="holds ani1/ (default: jat's data dir)")
    parser.add_argument("--sizes", default="100000,1000000", help="conformation counts")
    parser.add_argument("--batch", type=int, default=128, help="structures per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (compare)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 000 and 4 000")
    parser.add_argument(
        "--no-command", action="store_true", help="skip the whole-command measurements"
    )
    parser.add_argument(
        "--command-only", action="store_true", help="only the whole-command measurements"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


class SyntheticAni1(Sequence):
    """``n`` ANI-1-like conformations made on request (see the module docstring)."""

    def __init__(self, n: int, data_dir: str | None):
        import numpy as np

        from jat.data import data_dir as default_dir
        from jat.data import read_ani1

        root = os.path.join(data_dir or str(default_dir()), "ani1")
        base = [
            s
            for name in ("ani_gdb_s01.h5", "ani_gdb_s02.h5")
            for s in read_ani1(os.path.join(root, name))
        ]
        self.n, self.np = n, np
        self.symbols = [s.symbols for s in base]
        self.positions = [s.positions for s in base]
        self.energy = np.array([s.energy for s in base])
        self.cell = np.zeros((3, 3))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int):
        from jat.data.structure import Structure

        if not 0 <= k < self.n:
            raise IndexError(k)
        np = self.np
        b = k % len(self.symbols)
        delta = np.random.default_rng(k).normal(0.0, NOISE, self.positions[b].shape)
        return Structure(
            self.symbols[b],
            self.positions[b] + delta,
            self.cell,
            (False, False, False),
            energy=float(self.energy[b] + 0.5 * SPRING * np.sum(delta**2)),
            forces=-SPRING * delta,
            source=f"synthetic[{k}] (ANI-1 conformation {b})",
        )


def _setup(n: int, data_dir: str | None, batch: int):
    """The lazy set, its buckets and energy reference (from the first 2 000), the model, the
    compiled step and its state."""
    import jax.numpy as jnp
    import numpy as np

    import jat
    from jat.training import optim, steps
    from jat.training.dataset import choose_buckets
    from jat.training.splits import fit_energy_reference

    structures = SyntheticAni1(n, data_dir)
    head = [structures[k] for k in range(min(n, 2000))]
    shift, scale = fit_energy_reference(head, SPECIES, forces_trained=True)
    bounds = choose_buckets([len(s) for s in structures.symbols], 4)
    pot = jat.Potential.create("jat", SPECIES, CUTOFF, seed=0, **MODEL)
    tx = optim.optimizer("adam", 0.0, 10.0)
    spec = steps.LossSpec(forces_weight=1.0, energy_weight=0.1)
    run = {
        "step": steps.compiled_train_step(pot.energy_model, tx, spec, 0.99),
        "state": steps.initial_state(pot.params, tx),
        "scale": jnp.full(len(SPECIES), scale, jnp.float32),
        "lr": np.float32(1e-4),
    }
    return structures, shift, bounds, run


def _build(structures, shift, bounds, layout: str):
    import numpy as np

    from jat.training.dataset import build_dataset

    t0 = time.perf_counter()
    data = build_dataset(
        structures, SPECIES, CUTOFF, shift, bounds, neighbor_lists=layout, dtype=np.float32
    )
    return data, time.perf_counter() - t0


def _warm(run: dict, data, batch: int) -> float:
    """Compiles the step (and the per-batch build) for every bucket; seconds taken."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    t0 = time.perf_counter()
    for bucket in data.buckets:
        rows = np.arange(min(batch, len(bucket)))
        run["state"], m = run["step"](
            run["state"], run["scale"], bucket.batch(rows, batch, jnp.float32), run["lr"]
        )
        jax.block_until_ready(m)
    return time.perf_counter() - t0


def _timed(run: dict, data, batch: int, n_steps: int, seed: int) -> float:
    """Structures per second over ``n_steps`` steps of a shuffled epoch (batches assembled
    inside the timing, nothing synchronised before the last step, as in a run)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    batches = data.batches(batch, np.random.default_rng(seed))[:n_steps]
    t0 = time.perf_counter()
    m = None
    for b, rows in batches:
        batch_ = data.buckets[b].batch(rows, batch, jnp.float32)
        run["state"], m = run["step"](run["state"], run["scale"], batch_, run["lr"])
    jax.block_until_ready(m)
    return sum(len(rows) for _, rows in batches) / (time.perf_counter() - t0)


def child(args: argparse.Namespace) -> dict:
    mode, n = args.child.split(":")
    n = int(n)
    structures, shift, bounds, run = _setup(n, args.data_dir, args.batch)
    if mode == "per_batch":
        before = _peak_rss_gb()
        data, build_s = _build(structures, shift, bounds, "per_batch")
        warm_s = _warm(run, data, args.batch)
        rates = [_timed(run, data, args.batch, args.steps, k) for k in range(args.rounds)]
        return {
            "mode": mode,
            "structures": n,
            "build_s": build_s,
            "compile_s": warm_s,
            "rss_before_data_gb": before,
            "peak_rss_gb": _peak_rss_gb(),
            "buckets": [list(b.shape) for b in data.buckets],
            "structures_per_s": statistics.median(rates),
        }
    layouts = {}
    build = {}
    for layout in ("stored", "per_batch"):
        layouts[layout], build[layout] = _build(structures, shift, bounds, layout)
        _warm(run, layouts[layout], args.batch)
    rates: dict[str, list[float]] = {name: [] for name in layouts}
    for k in range(args.rounds):
        for name, data in layouts.items():
            rates[name].append(_timed(run, data, args.batch, args.steps, 100 + k))
    per_s = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "mode": mode,
        "structures": n,
        "build_s": build,
        "edge_slots": {name: [list(b.shape) for b in d.buckets] for name, d in layouts.items()},
        "structures_per_s": per_s,
        "rounds": rates,
        "ratio": per_s["per_batch"] / per_s["stored"],
    }


def _run_child(args: argparse.Namespace, what: str) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--batch", str(args.batch),
           "--steps", str(args.steps), "--rounds", str(args.rounds)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{what} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _base_molecules(data_dir: str | None) -> list[tuple[str, object, object, object]]:
    """(group, species, coordinates (C, N, 3), energies (C,) Hartree) of ANI-1 s01 and s02."""
    import h5py
    import numpy as np

    from jat.data import data_dir as default_dir

    root = os.path.join(data_dir or str(default_dir()), "ani1")
    out = []
    for name in ("ani_gdb_s01.h5", "ani_gdb_s02.h5"):
        with h5py.File(os.path.join(root, name), "r") as h5:
            def visit(key, item):
                if isinstance(item, h5py.Group) and "coordinates" in item:
                    out.append((key, item["species"][()], np.asarray(item["coordinates"][()]),
                                np.asarray(item["energies"][()], np.float64)))
            h5.visititems(visit)
    return out


def write_ani1_like(n: int, path: str, data_dir: str | None) -> None:
    """``n`` synthetic conformations in ANI-1's HDF5 layout: repeat r of base conformation c
    perturbed by N(0, NOISE) seeded by (r, c), energy plus the harmonic energy (Hartree)."""
    import h5py
    import numpy as np
    from ase.units import Hartree

    base = _base_molecules(data_dir)
    per_repeat = sum(len(e) for _, _, _, e in base)
    repeats = -(-n // per_repeat)
    left = n
    with h5py.File(path, "w") as h5:
        for r in range(repeats):
            for g, (key, species, coords, energies) in enumerate(base):
                take = min(left, len(energies))
                if take == 0:
                    break
                delta = np.random.default_rng([r, g]).normal(0.0, NOISE, coords[:take].shape)
                group = h5.create_group(f"synthetic/{key.replace('/', '_')}-r{r}")
                group["species"] = species
                group["coordinates"] = (coords[:take] + delta).astype(np.float32)
                group["energies"] = (
                    energies[:take] + 0.5 * SPRING * np.sum(delta**2, axis=(1, 2)) / Hartree
                )
                left -= take


def run_command(n: int, workdir: str, layout: str, data_dir: str | None, batch: int) -> dict:
    """``python -m jat.train`` on ``n`` synthetic conformations; its peak RSS and throughput."""
    path = os.path.join(workdir, f"synthetic-{n}.h5")
    if not os.path.exists(path):
        write_ani1_like(n, path, data_dir)
    run_dir = os.path.join(workdir, f"run-{n}-{layout}")
    epochs = 1 if n >= 500_000 else 2
    cmd = [
        sys.executable, "-m", "jat.train", f"data.train={path}", "data.format=ani1",
        "data.split.validation=0.01", "model.name=jat", f"model.cutoff={CUTOFF}",
        *(f"model.{k}={v}" for k, v in MODEL.items()), "loss.forces_weight=0",
        "loss.energy_weight=1", f"training.batch_size={batch}", f"training.epochs={epochs}",
        f"training.neighbor_lists={layout}", "logging.progress=none", f"run_dir={run_dir}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status:
        sys.stderr.write(err)
        raise SystemExit(f"jat.train on {n} conformations failed (status {status})")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    rates = [r["train_structures_per_s"] for r in rows if "train_structures_per_s" in r]
    return {
        "structures": n,
        "layout": layout,
        "epochs": epochs,
        "wall_s": seconds,
        "peak_rss_gb": usage.ru_maxrss / 2**20,
        "train_structures_per_s": max(rates),
    }


def measure_commands(args: argparse.Namespace, sizes: list[int]) -> tuple[dict, dict]:
    """The whole-command runs (see the module docstring), printed; (runs, ratios)."""
    import tempfile

    small, large = min(sizes), max(sizes)
    commands: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="jat-streaming-") as work:
        commands["stored"] = run_command(small, work, "stored", args.data_dir, args.batch)
        for n in sizes:
            commands[str(n)] = run_command(n, work, "per_batch", args.data_dir, args.batch)
    for c in commands.values():
        print(
            f"python -m jat.train, {c['structures']:>9} conformations, {c['layout']:>9}: "
            f"peak RSS {c['peak_rss_gb']:.2f} GB, {c['train_structures_per_s']:8.1f} "
            f"structures/s, {c['wall_s']:.0f} s in all"
        )
    big, little = commands[str(large)], commands[str(small)]
    figures = {
        "peak_rss_gb": big["peak_rss_gb"],
        "rss_ratio": big["peak_rss_gb"] / little["peak_rss_gb"],
        "throughput_vs_stored": big["train_structures_per_s"]
        / commands["stored"]["train_structures_per_s"],
    }
    print(
        f"python -m jat.train at {large}: peak RSS {figures['peak_rss_gb']:.2f} GB, "
        f"{figures['rss_ratio']:.2f}× that at {small}; throughput "
        f"{figures['throughput_vs_stored']:.1%} of stored lists at {small}"
    )
    return commands, figures


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    import jax

    sizes = [2000, 4000] if args.quick else [int(x) for x in args.sizes.split(",")]
    if args.quick:
        args.steps, args.rounds, args.batch = 3, 1, 16
    small, large = min(sizes), max(sizes)
    if args.command_only:
        commands, figures = measure_commands(args, sizes)
        print(json.dumps({"benchmark": "streaming", "command": commands,
                          "command_figures": figures}))
        return 0
    runs = {n: _run_child(args, f"per_batch:{n}") for n in sizes}
    compare = _run_child(args, f"compare:{small}")
    print(
        f"streamed synthetic ANI-1-like conformations, JAT {MODEL}, cutoff {CUTOFF} Å, batch "
        f"{args.batch}; {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} on "
        f"{jax.default_backend()}"
    )
    for n, r in runs.items():
        print(
            f"per_batch {n:>9}: build {r['build_s']:7.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB "
            f"({r['rss_before_data_gb']:.2f} GB before the data), "
            f"{r['structures_per_s']:8.1f} structures/s"
        )
    per_s = compare["structures_per_s"]
    print(
        f"in memory at {small}: stored {per_s['stored']:.1f}, per_batch {per_s['per_batch']:.1f} "
        f"structures/s (median of {args.rounds} interleaved rounds of {args.steps} steps): "
        f"{compare['ratio']:.1%} (target ≥ {THROUGHPUT_TARGET:.0%})"
    )
    peak = runs[large]["peak_rss_gb"]
    rss_ratio = peak / runs[small]["peak_rss_gb"]
    large_ratio = runs[large]["structures_per_s"] / per_s["stored"]
    print(
        f"{large}: peak RSS {peak:.2f} GB (target ≤ {RSS_TARGET_GB} GB), {rss_ratio:.2f}× that at "
        f"{small} (target ≤ {RSS_RATIO_TARGET}×); throughput {large_ratio:.1%} of stored at "
        f"{small} (separate processes)"
    )
    commands, command_figures = ({}, {}) if args.no_command else measure_commands(args, sizes)
    summary = {
        "benchmark": "streaming",
        "backend": jax.default_backend(),
        "batch": args.batch,
        "model": MODEL,
        "per_batch": {str(n): r for n, r in runs.items()},
        "compare": compare,
        "peak_rss_gb": peak,
        "rss_ratio": rss_ratio,
        "throughput_ratio": compare["ratio"],
        "large_vs_stored": large_ratio,
        "command": commands,
        "command_figures": command_figures,
        "targets_met": {
            "rss": peak <= RSS_TARGET_GB,
            "rss_ratio": rss_ratio <= RSS_RATIO_TARGET,
            "throughput": compare["ratio"] >= THROUGHPUT_TARGET,
        },
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
