"""Cost of the neighbour list and of each model's energy + forces versus system size (EAN box).

    python benchmarks/scaling.py [--data-dir DIR] [--out DIR] [--models jat,schnet,bessel]
                                 [--sizes 1,2,3,4] [--repeats 3] [--fit-from 1800] [--quick]

The first EAN configuration (225 atoms, 12.9 Å cubic, periodic) is replicated n × n × n
(``ase.Atoms.repeat``; n = 1 … 4: 225, 1 800, 6 075, 14 400 atoms). For every size:

- neighbour list, at each model cutoff (5 Å; 3.5 Å for the Bessel model):
  ``jat.graph.allocate`` on the host (static bounds) and the jitted ``jat.graph.build`` with
  that spec (what an MD step pays), median of ``--repeats`` calls after the compiling one;
- each model at its EAN reference settings: ``Potential.compute(atoms, stress=False)`` end to
  end (host conversion, neighbour list, model, forces), median of ``--repeats`` calls after a
  first call that allocates and compiles (reported as ``first s``), and the peak resident
  memory of that measurement (Linux: VmHWM, reset before each; else the process peak so far).

The scaling exponent is the least-squares slope of log time against log atoms over the sizes
with at least ``--fit-from`` atoms (1 800 … 14 400); the target is below 1.15 for every model.
Writes ``scaling.png`` and ``scaling.json`` to ``--out``; the last line printed is one JSON object
with every figure. ``--quick``: tiny models, sizes 1–2 (both fitted), two repeats (a smoke
test, not a measurement). Memory: at 14 400 atoms and 5 Å the graph has ~0.78 M edges; the peak
RSS is printed per model and size.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from _common import (
    COLORS,
    EAN_FILE,
    LABELS,
    add_common_arguments,
    describe_environment,
    environment,
    fit_exponent,
    fmt,
    ints,
    median_seconds,
    model_specs,
    n_params,
    peak_rss_mb,
    pyplot,
    require,
    resolve_dirs,
    result_stem,
    save_figure,
    timed,
    write_json,
)

from jat import graph
from jat.data import read_ean

TARGET = 1.15
BUILD = jax.jit(graph.build, static_argnums=3)
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux ≥ 4.0; else a no-op)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    """Peak RSS since the last :func:`reset_peak` (VmHWM), MiB; the process peak elsewhere."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def neighbour_list(atoms, cutoff: float, repeats: int) -> dict[str, Any]:
    positions, cell = atoms.get_positions(), atoms.cell[:]
    alloc_s = median_seconds(
        lambda: graph.allocate(positions, cutoff, cell=cell, pbc=True), repeats, warmup=0
    )
    spec = graph.allocate(positions, cutoff, cell=cell, pbc=True)
    pos, box = jnp.asarray(positions, jnp.float32), jnp.asarray(cell, jnp.float32)
    nbrs, compile_s = timed(lambda: jax.block_until_ready(BUILD(pos, box, None, spec)))
    if bool(nbrs.overflow):
        raise RuntimeError(f"neighbour list overflowed at {len(atoms)} atoms")
    build_s = median_seconds(
        lambda: jax.block_until_ready(BUILD(pos, box, None, spec)), repeats, warmup=0
    )
    return {
        "cutoff": cutoff,
        "n_atoms": len(atoms),
        "n_edges": int(nbrs.n_edges),
        "method": spec.method,
        "allocate_ms": alloc_s * 1e3,
        "build_ms": build_s * 1e3,
        "compile_s": compile_s,
    }


def model_scaling(name: str, spec, boxes: list, repeats: int) -> tuple[dict, list[dict]]:
    pot = spec.create()
    rows = []
    for atoms in boxes:
        gc.collect()
        reset_peak()
        _, first_s = timed(lambda a=atoms: pot.compute(a, stress=False))
        seconds = median_seconds(lambda a=atoms: pot.compute(a, stress=False), repeats, warmup=0)
        row = {
            "model": name,
            "n_atoms": len(atoms),
            "ms": seconds * 1e3,
            "us_per_atom": seconds * 1e6 / len(atoms),
            "first_s": first_s,
            "peak_rss_mb": round(peak_mb()),
        }
        rows.append(row)
        print(
            f"{name:8} {row['n_atoms']:>7} {row['ms']:>10.1f} {row['us_per_atom']:>9.1f} "
            f"{row['first_s']:>8.1f} {row['peak_rss_mb']:>12}",
            flush=True,
        )
    info = {
        "model": name,
        "settings": spec.hyper,
        "cutoff": spec.cutoff,
        "params": n_params(pot.params),
    }
    return info, rows  # pot and its compiled functions go with it


def plot(nl: list[dict], rows: list[dict], exponents: dict, path: Path) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for model in COLORS:
        pts = [r for r in rows if r["model"] == model]
        if pts:
            k = exponents["models"].get(model)
            label = f"{LABELS[model]} E+F" + (f" (N^{k:.2f})" if k is not None else "")
            ax.plot(
                [r["n_atoms"] for r in pts],
                [r["ms"] for r in pts],
                "o-",
                color=COLORS[model],
                label=label,
            )
    for cutoff in sorted({r["cutoff"] for r in nl}, reverse=True):
        pts = [r for r in nl if r["cutoff"] == cutoff]
        k = exponents["neighbour_list"].get(str(cutoff))
        label = f"neighbour list {cutoff:g} Å" + (f" (N^{k:.2f})" if k is not None else "")
        ax.plot(
            [r["n_atoms"] for r in pts],
            [r["build_ms"] for r in pts],
            "s--",
            color="gray" if cutoff >= 5 else "silver",
            label=label,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms (EAN box replicated n×n×n)")
    ax.set_ylabel("time per call (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("energy + forces and neighbour list versus system size")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--models", default="jat,schnet,bessel")
    parser.add_argument("--sizes", type=ints, default=[1, 2, 3, 4], help="replications n")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per size")
    parser.add_argument("--fit-from", type=int, default=1800, help="fit sizes ≥ this many atoms")
    args = parser.parse_args(argv)
    if args.quick:  # two sizes, both fitted: checks the pipeline, measures nothing
        args.sizes, args.repeats, args.fit_from = [1, 2], 2, 0
    root, out = resolve_dirs(args)
    specs = model_specs(args.models, args.quick)
    base = read_ean(require(root / EAN_FILE), index=0)[0]
    base.calc = None
    boxes = [base.repeat((n, n, n)) for n in args.sizes]
    env = environment()
    print(
        f"Scaling on the EAN box replicated {args.sizes}: "
        f"{'QUICK (tiny models), ' if args.quick else ''}{describe_environment(env)}",
        flush=True,
    )

    print(
        f"{'cutoff':>6} {'atoms':>7} {'edges':>9} {'method':>9} {'alloc ms':>9} "
        f"{'build ms':>9} {'compile s':>9}"
    )
    nl = []
    for cutoff in sorted({s.cutoff for s in specs.values()}, reverse=True):
        for atoms in boxes:
            r = neighbour_list(atoms, cutoff, args.repeats)
            nl.append(r)
            print(
                f"{cutoff:>6g} {r['n_atoms']:>7} {r['n_edges']:>9} {r['method']:>9} "
                f"{r['allocate_ms']:>9.1f} {r['build_ms']:>9.2f} {r['compile_s']:>9.1f}",
                flush=True,
            )
    jax.clear_caches()

    print(
        f"{'model':8} {'atoms':>7} {'ms/call':>10} {'µs/atom':>9} {'first s':>8} "
        f"{'peak RSS MB':>12}"
    )
    models, rows = [], []
    for name, spec in specs.items():
        info, r = model_scaling(name, spec, boxes, args.repeats)
        models.append(info)
        rows += r
        jax.clear_caches()
        gc.collect()

    def exponent(pts, key):
        pts = [p for p in pts if p["n_atoms"] >= args.fit_from]
        return fit_exponent([p["n_atoms"] for p in pts], [p[key] for p in pts])

    exponents = {
        "fit_atoms": sorted({len(b) for b in boxes if len(b) >= args.fit_from}),
        "models": {m: exponent([r for r in rows if r["model"] == m], "ms") for m in specs},
        "neighbour_list": {
            str(c): exponent([r for r in nl if r["cutoff"] == c], "build_ms")
            for c in sorted({r["cutoff"] for r in nl}, reverse=True)
        },
    }
    met = {m: (k is not None and k < TARGET) for m, k in exponents["models"].items()}
    print(f"scaling exponents over {exponents['fit_atoms']} atoms (target < {TARGET}):")
    for m, k in exponents["models"].items():
        print(f"  {m:8} N^{fmt(k, '.3f')}  {'ok' if met[m] else 'MISSES'}")
    for c, k in exponents["neighbour_list"].items():
        print(f"  neighbour list {c} Å: N^{fmt(k, '.3f')}")
    stem = result_stem("scaling", args.quick)
    png = plot(nl, rows, exponents, out / f"{stem}.png")
    summary = {
        "benchmark": "scaling",
        "quick": args.quick,
        "data": str(root / EAN_FILE),
        "sizes": args.sizes,
        "repeats": args.repeats,
        "env": env,
        "neighbour_list": nl,
        "models": models,
        "results": rows,
        "exponents": exponents,
        "target": TARGET,
        "target_met": met,
        "all_targets_met": all(met.values()),
        "peak_rss_mb": round(peak_rss_mb()),
        "plot": png,
    }
    write_json(out / f"{stem}.json", summary)
    print(
        f"peak RSS of the process: {summary['peak_rss_mb']} MB; wrote {out / f'{stem}.json'}"
        + (f" and {png}" if png else "")
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    main()
