"""Cost of a committee (deep or shallow) against one member, on the EAN box (225 atoms, 5 Å,
periodic).

    python benchmarks/committee.py [--data-dir DIR] [--members 4] [--models jat,schnet]
                                   [--kinds deep,shallow] [--repeats 10] [--epochs 3] [--batch 8]

For each model, measured interleaved (one member, then the committee, repeated) in this run:

* model only: energy + forces through the predictor on a fixed graph (``predict`` against
  ``predict_committee``, K parameter sets on one graph in one compiled call);
* end to end: ``Potential.compute`` (neighbour list, checks, host transfer, mean and σ);
* training: one epoch over the 40 EAN training configurations with the compiled step of
  ``python -m jat.train`` (one member against the K-member step).

A shallow ensemble (``--kinds shallow``: one network with K readout heads) is measured the same
way (its K per-head forces are K backward passes of one forward pass), and also energy only
(``model_energy_ms``: the heads' energies and energy σ from one forward pass, against one
model's energy) and with the forces of the heads' mean only (``model_mean_forces_ms``,
``member_forces=False``: energy σ, mean forces from one backward pass, against one model's
energy and forces); its training step is the one ``kind: shallow`` trains with (loss of the mean
plus the heads' NLL).

Targets (4 members): deep inference at most 2.5× one member's time and training at most 3.5× per
epoch; shallow energy + forces at most 1.3× one model's time. The last line is one JSON object
with every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jat
from jat.data import data_dir, read_structures
from jat.dtypes import precision
from jat.predictor import predict, predict_committee
from jat.training import optim, steps
from jat.training.dataset import build_dataset, choose_buckets
from jat.training.splits import fit_energy_reference

SPECIES = ("H", "C", "N", "O")
MODELS = {
    "jat": ("jat", {"layers": 7, "width": 48, "heads": 1}),
    "schnet": ("schnet", {"features": 64, "interactions": 3}),
    "bessel": ("bessel", {}),
}
CUTOFF = 5.0
INFERENCE_TARGET = 2.5
TRAINING_TARGET = 3.5
SHALLOW_TARGET = 1.3


def _blocking(fn):
    def call():
        return jax.block_until_ready(fn())

    return call


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def inference_calls(single: jat.Potential, committee: jat.Potential, atoms):
    """(model-only, end-to-end, model-only energy) calls for the single potential and the
    committee."""
    out = {}
    for name, pot in (("single", single), ("committee", committee)):
        with precision(pot.dtype):
            g = pot.graph(atoms)
            params, scale = pot.device_constants()
            run = predict_committee if pot.stacked else predict
            fn = jax.jit(functools.partial(run, pot.energy_model, forces=True))
            fn_e = jax.jit(functools.partial(run, pot.energy_model, forces=False))
            fn_m = jax.jit(functools.partial(run, pot.energy_model, forces=True,
                                             member_forces=False))
        out[name] = (
            _blocking(lambda fn=fn, params=params, scale=scale, g=g: fn(params, scale, g)),
            lambda pot=pot: pot.compute(atoms, stress=False),
            _blocking(lambda fn=fn_e, params=params, scale=scale, g=g: fn(params, scale, g)),
            _blocking(lambda fn=fn_m, params=params, scale=scale, g=g: fn(params, scale, g)),
        )
    return out


def training_epochs(pot: jat.Potential, structures, batch_size: int):
    """A function running one training epoch (seconds) of ``pot`` (a committee: all members)."""
    shift, scale = fit_energy_reference(structures, SPECIES, forces_trained=True)
    data = build_dataset(structures, SPECIES, CUTOFF, shift, choose_buckets([225], 1))
    tx = optim.optimizer("adam", 0.0, 10.0)
    committee = pot.stacked
    spec = steps.LossSpec(ensemble="nll" if pot.ensemble == "shallow" else None)
    step = steps.compiled_train_step(pot.energy_model, tx, spec, 0.99, committee=committee)
    state = [steps.initial_state(pot.params, tx, committee)]
    scale = jnp.full(len(SPECIES), scale, jnp.float32)
    weights = jnp.ones((pot.n_members, batch_size), jnp.float32)
    lr = np.float32(1e-4)

    def run(batch):
        args = (state[0], scale, batch, lr) + ((weights,) if committee else ())
        state[0], m = step(*args)
        return m

    first = data.buckets[0].batch(np.arange(batch_size), batch_size, jnp.float32)
    jax.block_until_ready(run(first))  # compiles
    seeds = iter(range(10**6))

    def epoch() -> float:
        rng = np.random.default_rng(next(seeds))
        t0 = time.perf_counter()
        m = None
        for _, batch in data.iterate(batch_size, jnp.float32, rng):
            m = run(batch)
        jax.block_until_ready(m)
        return time.perf_counter() - t0

    return epoch


def measure(name: str, structures, members: int, repeats: int, epochs: int, batch: int,
            kind: str = "deep"):
    model, kwargs = MODELS[name]
    single = jat.Potential.create(model, SPECIES, CUTOFF, seed=0, **kwargs)
    committee = jat.Potential.create(model, SPECIES, CUTOFF, seed=0, members=members,
                                     ensemble=kind, **kwargs)
    atoms = structures[0].to_atoms()
    calls = inference_calls(single, committee, atoms)
    for which in calls.values():  # compile
        for call in which:
            call()
    times = {(w, k): [] for w in calls for k in ("model", "compute", "energy", "mean")}
    for _ in range(repeats):
        for w, (model_call, compute_call, energy_call, mean_call) in calls.items():
            times[(w, "model")].append(_time(model_call))
            times[(w, "compute")].append(_time(compute_call))
            times[(w, "energy")].append(_time(energy_call))
            times[(w, "mean")].append(_time(mean_call))
    med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
    train = {w: training_epochs(p, structures, batch) for w, p in
             (("single", single), ("committee", committee))}
    epoch_times = {w: [] for w in train}
    for _ in range(epochs):
        for w, fn in train.items():
            epoch_times[w].append(fn())
    epoch_med = {w: statistics.median(v) for w, v in epoch_times.items()}
    return {
        "model": name,
        "kind": kind,
        "settings": kwargs,
        "members": members,
        "model_ms": {"single": med[("single", "model")], "committee": med[("committee", "model")]},
        "model_energy_ms": {
            "single": med[("single", "energy")], "committee": med[("committee", "energy")]
        },
        "model_mean_forces_ms": {
            "single": med[("single", "mean")], "committee": med[("committee", "mean")]
        },
        "compute_ms": {
            "single": med[("single", "compute")], "committee": med[("committee", "compute")]
        },
        "epoch_s": epoch_med,
        "model_ratio": med[("committee", "model")] / med[("single", "model")],
        "model_energy_ratio": med[("committee", "energy")] / med[("single", "energy")],
        "model_mean_forces_ratio": med[("committee", "mean")] / med[("single", "model")],
        "compute_ratio": med[("committee", "compute")] / med[("single", "compute")],
        "training_ratio": epoch_med["committee"] / epoch_med["single"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--models", default="jat,schnet")
    parser.add_argument("--kinds", default="deep,shallow", help="deep, shallow or both")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--configurations", type=int, default=40)
    args = parser.parse_args()
    path = Path(args.data_dir or data_dir()) / "ean" / "ean_15pairs_dft.jsonl"
    if not path.is_file():
        print(f"EAN data not found at {path}; set JAT_DATA_DIR or pass --data-dir", file=sys.stderr)
        return 1
    structures = list(read_structures(path))[: args.configurations]
    print(f"committee of {args.members} against one member, EAN box (225 atoms), "
          f"{jax.default_backend()}")
    print(f"{'model':8} {'kind':8} {'model ms 1/K':>16} {'energy ms 1/K':>16} "
          f"{'compute ms 1/K':>16} {'epoch s 1/K':>14} {'ratios m/e/c/t':>24}")
    results = []
    kinds = [k.strip() for k in args.kinds.split(",")]
    for name in args.models.split(","):
        for kind in kinds:
            r = measure(name.strip(), structures, args.members, args.repeats, args.epochs,
                        args.batch, kind)
            results.append(r)
            print(f"{name:8} {kind:8} "
                  f"{r['model_ms']['single']:7.1f}/{r['model_ms']['committee']:<8.1f} "
                  f"{r['model_energy_ms']['single']:7.1f}/"
                  f"{r['model_energy_ms']['committee']:<8.1f} "
                  f"{r['compute_ms']['single']:7.1f}/{r['compute_ms']['committee']:<8.1f} "
                  f"{r['epoch_s']['single']:6.2f}/{r['epoch_s']['committee']:<7.2f} "
                  f"{r['model_ratio']:5.2f}/{r['model_energy_ratio']:5.2f}/"
                  f"{r['compute_ratio']:5.2f}/{r['training_ratio']:5.2f}; mean forces "
                  f"{r['model_mean_forces_ratio']:5.2f}")
    summary = {
        "benchmark": "committee",
        "members": args.members,
        "inference_target": INFERENCE_TARGET,
        "training_target": TRAINING_TARGET,
        "shallow_target": SHALLOW_TARGET,
        "results": results,
    }
    if args.members == 4:
        summary["targets_met"] = {
            f"{r['model']}/{r['kind']}": (
                r["model_ratio"] <= SHALLOW_TARGET
                if r["kind"] == "shallow"
                else r["compute_ratio"] <= INFERENCE_TARGET
                and r["training_ratio"] <= TRAINING_TARGET
            )
            for r in results
        }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    sys.exit(main())
