"""MD step time: bare energy + forces, the ASE calculator, and the jitted JAX-MD loop (EAN box).

    python benchmarks/md_step.py [--data-dir DIR] [--out DIR] [--models jat,schnet]
                                 [--potential RUN_DIR ...] [--sizes 1,4] [--steps 40]
                                 [--paths bare,ase,jax_md] [--quick]

For each model and size (the first EAN configuration replicated n×n×n: 225·n³ atoms), in
float32, each case in its own child process (so its peak RSS is its own):

- ``bare``: the compiled energy + forces of the model on a precomputed list of the edges within
  the cutoff, positions already on the device: the floor an MD step cannot beat.
- ``ase``: ASE's ``VelocityVerlet`` with ``Potential.calculator()`` (neighbour list reused
  within a 1 Å skin, host↔device transfers, ASE's Python), ms per step after warm-up steps.
- ``jax_md``: JAX-MD's ``simulate.nve`` with ``jat.md`` (``--neighbor-list``: JAX-MD's, the
  default, or jat's; 0.5 Å skin),
  ``--steps`` steps per call jitted with ``jat.md.make_chunk``, ms per step after compilation.

Targets (issue 5, 225 atoms): ase / bare ≤ 1.5 and ase / jax_md ≥ 2. Models are freshly
initialised at the reference settings (JAT 7 × 48, SchNet 64 × 3, 5 Å; timings do not depend on
the parameter values) unless trained potentials are given with ``--potential`` (a
``python -m jat.train`` run directory). Velocities: Maxwell-Boltzmann at 300 K. Writes
``md_step.json`` to ``--out``; the last line printed is one JSON object with every figure.
``--quick``: tiny models, 225 atoms, few steps (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    EAN_FILE,
    add_common_arguments,
    bare_energy_forces,
    describe_environment,
    environment,
    ints,
    median_seconds,
    model_specs,
    peak_rss_mb,
    require,
    resolve_dirs,
    result_stem,
    timed,
    write_json,
)

ASE_TARGET = 1.5  # ase / bare, at most
JAX_MD_TARGET = 2.0  # ase / jax_md, at least
PATHS = ("bare", "ase", "jax_md")


def load_box(data_dir: Path, n: int):
    from jat.data import read_ean

    atoms = read_ean(require(data_dir / EAN_FILE), index=0)[0]
    atoms.calc = None
    return atoms.repeat((n, n, n))


def velocities(atoms, seed: int = 0) -> np.ndarray:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    a = atoms.copy()
    MaxwellBoltzmannDistribution(a, temperature_K=300.0, rng=np.random.default_rng(seed))
    Stationary(a)
    return a.get_velocities()


def time_bare(pot, atoms, repeats: int) -> dict[str, Any]:
    call, n_edges = bare_energy_forces(pot, atoms)
    _, compile_s = timed(call)
    seconds = median_seconds(call, repeats, warmup=0)
    return {"ms_per_step": 1e3 * seconds, "compile_s": compile_s, "n_edges": n_edges}


def time_ase(pot, atoms, steps: int, warmup: int) -> dict[str, Any]:
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.set_velocities(velocities(atoms))
    atoms.calc = calc = pot.calculator()
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    t0 = time.perf_counter()
    dyn.run(warmup)  # compiles
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - t0
    return {"ms_per_step": 1e3 * seconds / steps, "compile_s": compile_s,
            "rebuilds": calc.rebuilds, "edge_capacity": calc.edge_capacity}


def time_jax_md(pot, atoms, steps: int, repeats: int, neighbor_list: str) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from ase import units
    from jax_md import simulate

    import jat.md

    system = jat.md.jax_md_system(pot, atoms, neighbor_list=neighbor_list)
    init, apply = simulate.nve(system.energy_fn, system.shift_fn, dt=0.5 * units.fs)
    R = jnp.asarray(system.positions)
    masses = jnp.asarray(system.masses)
    momenta = jnp.asarray(velocities(atoms) @ system.rotation.T, R.dtype) * masses[:, None]
    nbrs = system.neighbor_fn.allocate(R)
    state = init(jax.random.PRNGKey(0), R, kT=0.0, mass=masses, momenta=momenta, neighbor=nbrs)
    chunk = jat.md.make_chunk(apply, steps)
    t0 = time.perf_counter()
    state, nbrs, _, again = jat.md.run_chunk(chunk, state, nbrs, system.neighbor_fn)
    jax.block_until_ready(state.position)
    compile_s = time.perf_counter() - t0
    times, reallocations = [], again
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, nbrs, _, again = jat.md.run_chunk(chunk, state, nbrs, system.neighbor_fn)
        jax.block_until_ready(state.position)
        times.append(time.perf_counter() - t0)
        reallocations += again
    return {"ms_per_step": 1e3 * statistics.median(times) / steps, "compile_s": compile_s,
            "reallocations": reallocations}


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One (model, size, path) in this process; prints nothing, returns the figures."""
    import jat

    specs = model_specs([case["model"]], case["quick"]) if not case.get("potential") else {}
    pot = (jat.Potential.load(case["potential"]) if case.get("potential")
           else specs[case["model"]].create())
    atoms = load_box(Path(case["data_dir"]), case["n"])
    steps = case["steps"]
    if case["path"] == "bare":
        out = time_bare(pot, atoms, repeats=max(3, steps // 4))
    elif case["path"] == "ase":
        out = time_ase(pot, atoms, steps, warmup=2)
    else:
        out = time_jax_md(pot, atoms, steps, repeats=3, neighbor_list=case["neighbor_list"])
    return {**case, "n_atoms": len(atoms), **out, "peak_rss_mb": round(peak_rss_mb())}


def child(case: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {**case, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--models", default="jat,schnet")
    parser.add_argument("--potential", action="append", default=[], metavar="RUN_DIR",
                        help="a trained potential (repeatable); replaces --models")
    parser.add_argument("--sizes", type=ints, default=[1, 4], help="replications n")
    parser.add_argument("--steps", type=int, default=40, help="timed steps at 225 atoms "
                        "(divided by n³ for larger boxes, at least 3)")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of "
                        f"{','.join(PATHS)}")
    parser.add_argument("--neighbor-list", choices=["jax_md", "jat"], default="jax_md",
                        help="the list of the JAX-MD path (jat.md's neighbor_list)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return {}
    if args.quick:
        args.sizes, args.steps = [1], 4
    paths = [p for p in args.paths.split(",") if p]
    if not paths or any(p not in PATHS for p in paths):
        parser.error(f"--paths: choose from {','.join(PATHS)}")
    root, out = resolve_dirs(args)
    require(root / EAN_FILE)
    if args.potential:
        import jat

        names = [jat.Potential.load(p).model for p in args.potential]
        models = [  # label, model, potential: labels unique when two potentials share a model
            (f"{m}#{k}" if names.count(m) > 1 else m, m, str(p))
            for k, (m, p) in enumerate(zip(names, args.potential, strict=True))
        ]
    else:
        models = [(name, name, None) for name in model_specs(args.models, args.quick)]
    env = environment()
    print(f"MD step time, EAN box replicated {args.sizes}, float32: "
          f"{'QUICK (tiny models), ' if args.quick else ''}{describe_environment(env)}",
          flush=True)
    print(f"{'model':8} {'atoms':>7} {'path':>7} {'ms/step':>10} {'compile s':>10} "
          f"{'peak RSS MB':>12}", flush=True)
    rows = []
    for label, name, potential in models:
        for n in args.sizes:
            steps = max(3, args.steps // n**3)
            for path in paths:
                case = {"model": name, "potential": potential, "n": n, "path": path,
                        "steps": steps, "quick": args.quick, "data_dir": str(root),
                        "neighbor_list": args.neighbor_list}
                row = child(case)
                rows.append(row)
                if "error" in row:
                    print(f"{label:8} {225 * n**3:>7} {path:>7}  FAILED: {row['error']}",
                          flush=True)
                    continue
                print(f"{label:8} {row['n_atoms']:>7} {path:>7} {row['ms_per_step']:>10.2f} "
                      f"{row['compile_s']:>10.1f} {row['peak_rss_mb']:>12}", flush=True)
    ratios = {}
    for label, name, potential in models:
        for n in args.sizes:
            got = {r["path"]: r.get("ms_per_step") for r in rows
                   if r["model"] == name and r["potential"] == potential and r["n"] == n}
            if all(got.get(p) for p in PATHS):
                key = f"{label}_{225 * n**3}"
                ratios[key] = {
                    "ase_over_bare": round(got["ase"] / got["bare"], 2),
                    "ase_over_jax_md": round(got["ase"] / got["jax_md"], 2),
                    "jax_md_over_bare": round(got["jax_md"] / got["bare"], 2),
                }
                print(f"{key}: ASE / bare {ratios[key]['ase_over_bare']} (target ≤ {ASE_TARGET}), "
                      f"ASE / JAX-MD {ratios[key]['ase_over_jax_md']} (target ≥ {JAX_MD_TARGET})")
    summary = {"benchmark": "md_step", "quick": args.quick, "env": env, "rows": rows,
               "ratios": ratios}
    write_json(out / f"{result_stem('md_step', args.quick)}.json", summary)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    main()
