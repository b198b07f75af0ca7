"""Data-parallel training throughput: 1 device against D devices at the same global batch.

    python benchmarks/data_parallel.py [--devices 2] [--batch 8] [--repeats 5] [--quick]

Times the training step of ``python -m jat.train`` on the EAN xTB data shipped with jat (32
boxes of 45 atoms, 5 Å, periodic; JAT 7 × 48 as in the thesis; ``--quick``: 8 structures and a
tiny JAT) with one device (the single-device
step) and with D devices (the sharded step: each device gets B/D structures; losses, counts
and gradients summed over the devices). On a CPU the D devices are simulated
(``--xla_force_host_platform_device_count``, set here before JAX starts), so they share the
same cores: the figure shows the cost of splitting, not a speed-up. Epochs of 1 and D devices
are interleaved (``--repeats`` of each) and the median taken; batches are assembled on the host
inside the timed epoch, as in a run. Target: D = 2 reaches ≥ 90 % of one device's throughput.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="D, the devices compared to 1")
    parser.add_argument("--batch", type=int, default=8, help="global batch (a multiple of D)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs of each")
    parser.add_argument("--structures", type=int, default=32, help="structures per epoch")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 8 structures")
    return parser.parse_args(argv)


def _force_devices(n: int) -> None:
    """Simulated CPU devices; must run before JAX is imported."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _force_devices(args.devices)

    import json
    import platform
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jat
    from jat.data import read_structures
    from jat.training import optim, parallel, steps
    from jat.training.dataset import build_dataset, choose_buckets
    from jat.training.splits import fit_energy_reference

    species = ("H", "C", "N", "O")
    hyper = {"layers": 2 if args.quick else 7, "width": 16 if args.quick else 48, "heads": 1}
    n = 8 if args.quick else args.structures
    structures = list(read_structures("builtin"))[:n]
    shift, scale = fit_energy_reference(structures, species, forces_trained=True)
    pot = jat.Potential.create("jat", species, 5.0, seed=0, **hyper)
    data = build_dataset(
        structures, species, 5.0, shift, choose_buckets([s.n_atoms for s in structures], 1)
    )
    tx = optim.optimizer("adam", 0.0, 10.0)
    spec, lr = steps.LossSpec(), np.float32(1e-4)
    scale = jnp.full(len(species), scale, jnp.float32)
    dp = parallel.data_parallel(args.devices, args.batch)
    if dp is None:
        print("--devices 1 compares nothing", file=sys.stderr)
        return 2
    runs = {
        1: {
            "step": steps.compiled_train_step(pot.energy_model, tx, spec, 0.99),
            "state": steps.initial_state(pot.params, tx),
            "scale": scale,
            "batch": lambda b, rows: data.buckets[b].batch(rows, args.batch, jnp.float32),
        },
        dp.size: {
            "step": parallel.compiled_train_step(dp, pot.energy_model, tx, spec, 0.99),
            "state": parallel.replicate(dp, steps.initial_state(pot.params, tx)),
            "scale": parallel.replicate(dp, scale),
            "batch": lambda b, rows: parallel.sharded_batch(
                dp, data.buckets[b], rows, args.batch, jnp.float32
            ),
        },
    }

    def epoch(run: dict, seed: int) -> float:
        t0 = time.perf_counter()
        m = None
        for b, rows in data.batches(args.batch, np.random.default_rng(seed)):
            run["state"], m = run["step"](run["state"], run["scale"], run["batch"](b, rows), lr)
        jax.block_until_ready(m)
        return time.perf_counter() - t0

    compile_s = {d: epoch(run, 0) for d, run in runs.items()}  # compiles, then one epoch
    times: dict[int, list[float]] = {d: [] for d in runs}
    for k in range(args.repeats):  # interleaved
        for d, run in runs.items():
            times[d].append(epoch(run, k + 1))
    per_s = {d: len(structures) / statistics.median(t) for d, t in times.items()}
    ratio = per_s[dp.size] / per_s[1]
    print(
        f"training throughput, JAT {hyper}, {len(structures)} structures × "
        f"{structures[0].n_atoms} atoms, global "
        f"batch {args.batch}; {platform.machine()}, {os.cpu_count()} CPUs, jax "
        f"{jax.__version__} on {jax.default_backend()}"
    )
    for d in runs:
        print(
            f"{d} device(s): {per_s[d]:8.2f} structures/s (median of {args.repeats} epochs; "
            f"first epoch with compilation {compile_s[d]:.1f} s)"
        )
    print(f"{dp.size} devices / 1 device: {ratio:.1%} (target ≥ 90 %)")
    summary = {
        "benchmark": "data_parallel",
        "backend": jax.default_backend(),
        "devices": dp.size,
        "batch": args.batch,
        "structures": len(structures),
        "model": hyper,
        "structures_per_s": {str(d): v for d, v in per_s.items()},
        "epoch_s": {str(d): t for d, t in times.items()},
        "first_epoch_s": {str(d): v for d, v in compile_s.items()},
        "ratio": ratio,
        "target": 0.9,
        "target_met": ratio >= 0.9,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
