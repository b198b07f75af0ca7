"""NVE energy drift of a jat potential on the EAN box, in float32 and float64.

    python examples/nve_drift.py --model runs/ean-20261121-101500          # 10 ps at 0.5 fs
    python examples/nve_drift.py --model RUN --engine jax_md --time 50      # jitted JAX-MD loop
    python examples/nve_drift.py --untrained --time 0.01 --sample-every 5   # smoke run
    python examples/nve_drift.py --model COMMITTEE_RUN --dtypes float32 --guard 0.5

Velocity Verlet (ASE's ``VelocityVerlet`` on ``JATCalculator``, or JAX-MD's ``simulate.nve``)
from the first EAN configuration with Maxwell-Boltzmann velocities at ``--temperature``, the same
start for every dtype. The total energy is sampled every ``--sample-every`` steps; the drift is the
slope of a least-squares line through E_tot(t) per atom, in meV/atom/ps, and the fluctuation the
RMS of the residual about that line (meV/atom). Writes a PNG of E_tot(t) − E_tot(0) per atom with
the fitted lines (when matplotlib is installed) and prints one JSON object on the last line.
With ``--guard`` (a committee) the calculator's uncertainty guard flags every step whose largest
per-atom force σ passes the threshold, and the first flag is reported next to the first time the
total energy departs from E_tot(0) by more than ``--jump`` meV/atom (a guard worth having fires
first: ``lead_ps`` is how long before); the largest per-atom σ at every sample and the closest
approach of two atoms are reported and plotted under the energy.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from jat.plotting import pyplot, save_figure
from jat.simulation.setup import (
    add_model_arguments,
    add_structure_arguments,
    initial_velocities,
    load_ean,
    load_potential,
)


def run_ase(atoms, pot, dtype, args, velocities):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from jat.uncertainty import Guard, atom_force_std

    atoms = atoms.copy()
    guard = Guard(args.guard, action="flag") if args.guard else None
    calc = pot.calculator(dtype=dtype, skin=args.skin, guard=guard)
    atoms.calc = calc
    atoms.set_velocities(velocities)
    dyn = VelocityVerlet(atoms, timestep=args.dt * units.fs)
    times, energies, sigma, closest = [], [], [], []

    def sample():
        times.append(dyn.nsteps * args.dt / 1000.0)  # ps
        energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        if guard is not None:
            sigma.append(float(np.max(atom_force_std(calc.results["forces_std"]))))
            closest.append(closest_distance(atoms))

    dyn.attach(sample, interval=args.sample_every)
    atoms.get_forces()  # compile outside the timing
    extra = {"rebuilds": 0}
    t0 = time.perf_counter()
    try:
        dyn.run(args.steps)
    except (ValueError, RuntimeError) as err:  # e.g. atoms driven onto each other
        extra["stopped"] = f"step {dyn.nsteps}: {err}"
    seconds = time.perf_counter() - t0
    extra["rebuilds"] = calc.rebuilds
    if guard is not None:
        first = calc.guard_events[0] if calc.guard_events else None
        # the calculator counts evaluations from 0: the first is the start, then one per step
        extra["guard"] = None if first is None else {
            "time_ps": first.step * args.dt / 1000.0, "atom": first.atom,
            "force_std": first.value, "events": len(calc.guard_events)}
        n = len(sigma)
        extra["force_std_max"] = {"start": sigma[0], "median": float(np.median(sigma)),
                                  "largest": float(np.max(sigma))} if n else None
        extra["closest_approach"] = {"A": float(np.min(closest)),
                                     "time_ps": times[int(np.argmin(closest))]} if n else None
        extra["trace"] = {"sigma": np.array(sigma), "closest": np.array(closest),
                          "times": np.array(times[:n])}
    return np.array(times), np.array(energies), seconds, extra


def closest_distance(atoms) -> float:
    """The shortest distance between two atoms (Å), periodic images included."""
    d = atoms.get_all_distances(mic=True)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def energy_jump(times, energies, n_atoms, threshold_mev):
    """The first time (ps) at which |E_tot(t) − E_tot(0)| per atom exceeds ``threshold_mev``
    meV/atom (or a sample is not finite), or None."""
    per_atom = 1e3 * np.abs(energies - energies[0]) / n_atoms
    bad = ~np.isfinite(per_atom) | (per_atom > threshold_mev)
    return float(times[np.argmax(bad)]) if bad.any() else None


def run_jax_md(atoms, pot, dtype, args, velocities):
    import jax
    import jax.numpy as jnp
    from ase import units
    from jax_md import quantity, simulate

    import jat.md

    pot = pot.with_dtype(dtype)
    system = jat.md.jax_md_system(pot, atoms, skin=args.skin)
    init, apply = simulate.nve(system.energy_fn, system.shift_fn, dt=args.dt * units.fs)
    R = jnp.asarray(system.positions)
    masses = jnp.asarray(system.masses)
    momenta = jnp.asarray(velocities @ system.rotation.T, R.dtype) * masses[:, None]
    nbrs = system.neighbor_fn.allocate(R)
    state = init(jax.random.PRNGKey(0), R, kT=0.0, mass=masses, momenta=momenta, neighbor=nbrs)

    def total(state, nbrs):
        kinetic = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
        return system.energy_fn(state.position, neighbor=nbrs) + kinetic

    chunk = jat.md.make_chunk(apply, args.sample_every, observe=total)
    times, energies = [0.0], [float(jax.jit(total)(state, nbrs))]
    jax.block_until_ready(chunk(state, nbrs))  # compile outside the timing
    regrown, done = 0, 0
    t0 = time.perf_counter()
    while done < args.steps:
        state, nbrs, energy, again = jat.md.run_chunk(chunk, state, nbrs, system.neighbor_fn)
        regrown += again
        done += args.sample_every
        times.append(done * args.dt / 1000.0)
        energies.append(float(energy))
    seconds = time.perf_counter() - t0
    return np.array(times), np.array(energies), seconds, {"reallocations": regrown}


def fit(times, energies, n_atoms):
    """Drift (meV/atom/ps) and RMS residual (meV/atom) of E_tot(t)."""
    per_atom = 1e3 * (energies - energies[0]) / n_atoms
    if len(times) < 2:
        return float("nan"), float("nan"), per_atom, np.zeros(2)
    coef = np.polyfit(times, per_atom, 1)
    residual = per_atom - np.polyval(coef, times)
    return float(coef[0]), float(np.sqrt(np.mean(residual**2))), per_atom, coef


def plot(results, path: Path, title: str, guard: float | None = None) -> None:
    plt = pyplot()
    if plt is None:
        return
    traced = [r for r in results.values() if r.get("trace") is not None]
    if traced:
        fig, (ax, ax_s) = plt.subplots(2, 1, figsize=(7, 6.4), sharex=True)
        for dtype, r in results.items():
            t = r.get("trace")
            if t is not None:
                ax_s.plot(t["times"], t["sigma"], lw=0.8, label=f"{dtype}: largest per-atom σ_F")
        if guard:
            ax_s.axhline(guard, color="k", ls=":", lw=0.8, label=f"guard {guard:g} eV/Å")
        ax_s.set_ylabel("largest ‖σ_F,i‖ (eV/Å)")
        ax_s.set_yscale("log")
        ax_s.set_xlabel("time (ps)")
        ax_s.legend()
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.set_xlabel("time (ps)")
    for dtype, r in results.items():
        (line,) = ax.plot(r["times"], r["per_atom"], lw=0.8, label=f"{dtype}")
        ax.plot(r["times"], np.polyval(r["coef"], r["times"]), "--", color=line.get_color(),
                label=f"{dtype} fit: {r['drift']:+.3g} meV/atom/ps")
    ax.set_ylabel("E_tot(t) − E_tot(0) (meV/atom)")
    ax.set_title(title)
    ax.legend()
    print(f"wrote {save_figure(fig, path, dpi=150)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--engine", choices=["ase", "jax_md"], default="ase")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float64"],
                        default=["float32", "float64"])
    parser.add_argument("--time", type=float, default=10.0, help="simulated time (ps)")
    parser.add_argument("--dt", type=float, default=0.5, help="time step (fs)")
    parser.add_argument("--temperature", type=float, default=300.0, help="initial K")
    parser.add_argument("--sample-every", type=int, default=20, help="steps between samples")
    parser.add_argument("--skin", type=float, default=0.5, help="neighbour-list skin (Å)")
    add_structure_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="nve_drift.png", help="PNG path ('' for none)")
    parser.add_argument("--guard", type=float, default=None, metavar="EV_PER_A",
                        help="a committee, ASE engine: flag steps whose largest per-atom force "
                        "σ passes this (eV/Å) and report the first, beside the energy jump")
    parser.add_argument("--jump", type=float, default=10.0, metavar="MEV",
                        help="the energy jump: |E_tot(t) - E_tot(0)| above this (meV/atom)")
    args = parser.parse_args(argv)
    if args.guard is not None and (args.engine != "ase" or not args.guard > 0):
        parser.error("--guard needs the ase engine and a positive threshold (eV/Å)")
    args.steps = max(1, round(args.time * 1000.0 / args.dt))
    if args.sample_every < 1:
        parser.error("--sample-every must be positive")
    args.steps = -(-args.steps // args.sample_every) * args.sample_every

    pot, description = load_potential(args)
    atoms, path = load_ean(args.data_dir, args.index)
    velocities = initial_velocities(atoms, args.temperature, args.seed)
    runner = run_ase
    if args.engine == "jax_md":
        import jax

        warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
        warnings.filterwarnings("ignore", message="scatter inputs have incompatible types")
        if "float64" in args.dtypes:
            jax.config.update("jax_enable_x64", True)
        runner = run_jax_md
    print(f"potential: {description}")
    print(f"structure: configuration {args.index} of {path} ({len(atoms)} atoms)")
    print(f"NVE ({args.engine}): {args.steps} steps of {args.dt} fs = "
          f"{args.steps * args.dt / 1000:g} ps from {args.temperature} K, sampled every "
          f"{args.sample_every} steps")
    results, summary = {}, {}
    for dtype in args.dtypes:
        times, energies, seconds, extra = runner(atoms, pot, dtype, args, velocities)
        drift, rms, per_atom, coef = fit(times, energies, len(atoms))
        ms = 1e3 * seconds / args.steps
        trace = extra.pop("trace", None)
        results[dtype] = {"times": times, "per_atom": per_atom, "coef": coef, "drift": drift,
                          "trace": trace}
        extra["energy_jump_ps"] = jump = energy_jump(times, energies, len(atoms), args.jump)
        if extra.get("guard") and jump is not None:
            extra["guard"]["lead_ps"] = jump - extra["guard"]["time_ps"]
        summary[dtype] = {"drift_meV_per_atom_per_ps": drift, "rms_meV_per_atom": rms,
                          "ms_per_step": ms, **extra}
        print(f"{dtype}: drift {drift:+.4g} meV/atom/ps, fluctuation {rms:.3g} meV/atom (RMS "
              f"about the fit), {ms:.1f} ms/step, {extra}")
    if args.plot:
        plot(results, Path(args.plot),
             f"NVE drift, EAN {len(atoms)} atoms, dt {args.dt} fs ({args.engine})", args.guard)
    print(json.dumps({"engine": args.engine, "steps": args.steps, "dt_fs": args.dt,
                      "results": summary}))


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    main()
