"""Training and inference throughput of JAT, SchNet and the Bessel baseline, EAN and ANI-1.

    python benchmarks/throughput.py [--data-dir DIR] [--out DIR] [--models jat,schnet,bessel]
        [--ean-batches 1,4,8] [--ani1-batches 1,8,32] [--ani1-fraction 0.01] [--ani1-max N]
        [--epochs 3] [--repeats 5] [--quick]

Models at their EAN reference settings (JAT 7 layers × 48, 1 head, 5 Å; SchNet 64 features,
3 interactions, 5 Å; Bessel n_max 4, embedding 2, widths 64:32:16, 3.5 Å) on two data sets:

- EAN: the first 40 configurations of the NeuralIL DFT set (225 atoms, periodic);
- ANI-1: subsets 1 and 2 (``ani1/ani_gdb_s01.h5``, ``s02``), ``--ani1-fraction`` of each
  molecule's conformations (``jat.data.read_ani1``; 619 molecules of 2–8 atoms at 0.01),
  shuffled with a fixed seed; ``--ani1-max`` caps their number.

Inference (energy + forces, no stress): ``Potential.compute`` per structure at batch 1,
``Potential.compute_batch`` over consecutive groups of the batch size otherwise, end to end
(host conversion, neighbour lists, model, one compiled call each). A pass over all structures
(a whole number of batches) is timed ``--repeats`` times after one untimed pass, which compiles
every shape; the figure is the median pass.

Training: the compiled step of ``python -m jat.train`` (``_common.TrainingStep``: bucketed
padded batches from ``jat.training.dataset.build_dataset``, ``jat.training.steps.train_step``,
Adam, EMA), forces loss on EAN and energy loss on ANI-1 (it has no forces), as
``benchmarks/training.py``; at most ``--max-buckets`` batch shapes (4, as a run); the median of
``--epochs`` shuffled epochs after one step per bucket, which compiles.

Structures/s and atoms/s (real atoms, no padding) per model, data set, mode and batch size;
compile time (first pass minus a steady pass for inference; the compiling steps for training)
separately. Writes ``throughput.png`` and ``throughput.json`` to ``--out``; the last line
printed is one JSON object with every figure. ``--quick``: tiny models, 4 EAN structures at
batch 1 and 16 ANI-1 structures at batch 4 (one training bucket), one epoch, two repeats (a
smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    ANI1_FILES,
    COLORS,
    EAN_FILE,
    LABELS,
    TrainingStep,
    add_common_arguments,
    describe_environment,
    environment,
    ints,
    model_specs,
    n_params,
    peak_rss_mb,
    pyplot,
    require,
    resolve_dirs,
    result_stem,
    save_figure,
    write_json,
)

from jat.data import read_ani1, read_structures
from jat.training.steps import LossSpec

LOSSES = {
    "ean": LossSpec(forces_weight=1.0, energy_weight=0.0),  # as examples/ean.yaml
    "ani1": LossSpec(forces_weight=0.0, energy_weight=1.0),  # ANI-1 has energies only
}
FULL = {"ean_batches": [1, 4, 8], "ani1_batches": [1, 8, 32]}
# --quick: both inference paths (compute at batch 1, compute_batch above) on little data.
QUICK = {
    "ean_batches": [1],
    "ani1_batches": [4],
    "ani1_max": 16,
    "epochs": 1,
    "repeats": 2,
    "max_buckets": 1,
}


def load_data(root: Path, fraction: float, ani1_max: int | None, n_ean: int) -> dict[str, list]:
    ean = list(read_structures(require(root / EAN_FILE)))[:n_ean]
    ani1 = []
    for name in ANI1_FILES:
        ani1.extend(read_ani1(require(root / name), fraction=fraction))
    order = np.random.default_rng(0).permutation(len(ani1))
    ani1 = [ani1[k] for k in order[: ani1_max or len(ani1)]]
    return {"ean": ean, "ani1": ani1}


def inference(pot, atoms: list, batch: int, repeats: int) -> dict[str, Any]:
    """Energy+forces over a whole number of batches of ``atoms``, timed per pass."""
    n = len(atoms) - len(atoms) % batch
    if n == 0:
        raise SystemExit(f"{len(atoms)} structures cannot fill a batch of {batch}")
    groups = [atoms[k : k + batch] for k in range(0, n, batch)]
    if batch == 1:

        def one_pass():
            for (a,) in groups:
                pot.compute(a, stress=False)
    else:

        def one_pass():
            for g in groups:
                pot.compute_batch(g, stress=False)

    t0 = time.perf_counter()
    one_pass()
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    n_atoms = sum(len(a) for g in groups for a in g)
    return {
        "structures": n,
        "pass_s": seconds,
        "structures_per_s": n / seconds,
        "atoms_per_s": n_atoms / seconds,
        "compile_s": max(first - seconds, 0.0),
    }


def training(
    pot, structures: list, batch: int, loss: LossSpec, epochs: int, data=None, max_buckets=4
):
    step = TrainingStep(pot, structures, batch, loss, max_buckets, data)
    compile_s = step.compile()
    seconds = statistics.median(step.epoch(seed) for seed in range(max(epochs, 1)))
    return step.data, {
        "structures": step.n_structures,
        "epoch_s": seconds,
        "structures_per_s": step.n_structures / seconds,
        "atoms_per_s": step.n_atoms / seconds,
        "compile_s": compile_s,
        "buckets": [list(s) for s in step.shapes],
    }


def measure(name: str, spec, data: dict[str, list], batches: dict[str, list[int]], args):
    pot = spec.create()
    rows = []
    for set_name, structures in data.items():
        atoms = [s.to_atoms() for s in structures]
        built = None
        for batch in batches[set_name]:
            built, train = training(
                pot, structures, batch, LOSSES[set_name], args.epochs, built, args.max_buckets
            )
            infer = inference(pot, atoms, batch, args.repeats)
            for mode, r in (("train", train), ("infer", infer)):
                rows.append({"model": name, "data": set_name, "mode": mode, "batch": batch, **r})
                print(
                    f"{name:8} {set_name:5} {mode:6} {batch:>5} {r['structures_per_s']:>12.1f} "
                    f"{r['atoms_per_s']:>11.0f} {r['compile_s']:>10.1f}",
                    flush=True,
                )
    info = {
        "model": name,
        "settings": spec.hyper,
        "cutoff": spec.cutoff,
        "params": n_params(pot.params),
        "peak_rss_mb_after": round(peak_rss_mb()),
    }
    return rows, info


def plot(rows: list[dict], path: Path) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for i, set_name in enumerate(("ean", "ani1")):
        for j, mode in enumerate(("train", "infer")):
            ax = axes[i, j]
            for model in COLORS:
                pts = [
                    r for r in rows if (r["model"], r["data"], r["mode"]) == (model, set_name, mode)
                ]
                if pts:
                    ax.plot(
                        [r["batch"] for r in pts],
                        [r["structures_per_s"] for r in pts],
                        "o-",
                        color=COLORS[model],
                        label=LABELS[model],
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size (structures)")
            ax.set_ylabel("structures / s")
            what = "training steps" if mode == "train" else "energy + forces"
            ax.set_title(f"{'EAN (225 atoms)' if set_name == 'ean' else 'ANI-1 s01–s02'}: {what}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--models", default="jat,schnet,bessel")
    parser.add_argument("--ean-batches", type=ints, default=None, help="default 1,4,8")
    parser.add_argument("--ani1-batches", type=ints, default=None, help="default 1,8,32")
    parser.add_argument("--ani1-fraction", type=float, default=0.01)
    parser.add_argument("--ani1-max", type=int, default=None, help="cap on ANI-1 structures")
    parser.add_argument("--epochs", type=int, default=3, help="timed training epochs")
    parser.add_argument("--repeats", type=int, default=5, help="timed inference passes")
    parser.add_argument(
        "--max-buckets", type=int, default=4, help="training batch shapes (as training.max_buckets)"
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if args.quick or getattr(args, key) is None:
            setattr(args, key, value)
    root, out = resolve_dirs(args)
    specs = model_specs(args.models, args.quick)
    n_ean = max(4 if args.quick else 40, *args.ean_batches)
    data = load_data(root, args.ani1_fraction, args.ani1_max, n_ean)
    batches = {"ean": args.ean_batches, "ani1": args.ani1_batches}
    env = environment()
    print(
        f"Throughput: EAN {len(data['ean'])} × 225 atoms (periodic), ANI-1 {len(data['ani1'])} "
        f"molecules ({sum(s.n_atoms for s in data['ani1'])} atoms); "
        f"{'QUICK (tiny models), ' if args.quick else ''}{describe_environment(env)}",
        flush=True,
    )
    print(
        f"{'model':8} {'data':5} {'mode':6} {'batch':>5} {'structures/s':>12} "
        f"{'atoms/s':>11} {'compile s':>10}"
    )
    rows, models = [], []
    for name, spec in specs.items():
        r, info = measure(name, spec, data, batches, args)
        rows += r
        models.append(info)
    print(
        "(train: optimiser steps, forces loss on EAN, energy loss on ANI-1; infer: energy + "
        "forces end to end; compile s reported apart from the rates)"
    )
    stem = result_stem("throughput", args.quick)
    png = plot(rows, out / f"{stem}.png")
    summary = {
        "benchmark": "throughput",
        "quick": args.quick,
        "data": {
            "ean": {"structures": len(data["ean"]), "atoms": 225},
            "ani1": {
                "structures": len(data["ani1"]),
                "fraction": args.ani1_fraction,
                "atoms": sum(s.n_atoms for s in data["ani1"]),
            },
        },
        "batches": batches,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "max_buckets": args.max_buckets,
        "env": env,
        "models": models,
        "results": rows,
        "peak_rss_mb": round(peak_rss_mb()),
        "plot": png,
    }
    write_json(out / f"{stem}.json", summary)
    print(f"wrote {out / f'{stem}.json'}" + (f" and {png}" if png else ""))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    main()
