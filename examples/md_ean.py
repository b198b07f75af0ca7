"""NVT molecular dynamics of the EAN ionic-liquid box with a jat potential, through ASE and JAX-MD.

    python examples/md_ean.py --model runs/ean-20261121-101500          # a python -m jat.train run
    python examples/md_ean.py --untrained --steps 20 --interval 5       # smoke run, random model
    python examples/md_ean.py --model RUN --engine jax_md --dtype float64 --steps 20000

Starts from the first configuration of ``$JAT_DATA_DIR/ean/ean_15pairs_dft.jsonl`` (225 atoms,
cubic 12.9 Å box) with Maxwell-Boltzmann velocities and runs

* ``ase``: ASE's Langevin thermostat on ``JATCalculator`` (the neighbour list is reused within
  a skin), writing ``OUT/ase_langevin.traj``;
* ``jax_md``: JAX-MD's Nosé-Hoover chain (``simulate.nvt_nose_hoover``) with the whole loop,
  neighbour-list updates included, jitted in chunks of ``--interval`` steps, writing
  ``OUT/jax_md_nose_hoover.traj``.

Both trajectories are ASE ``.traj`` files (positions, velocities, cell, potential energy):
``ase.io.read("OUT/ase_langevin.traj", ":")`` or ``ase gui``. Units: fs, K, eV, Å.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from jat.simulation.setup import (
    add_model_arguments,
    add_structure_arguments,
    initial_velocities,
    load_ean,
    load_potential,
)


def run_ase(atoms, pot, args, out: Path) -> None:
    from ase import units
    from ase.io import Trajectory
    from ase.md.langevin import Langevin

    atoms = atoms.copy()
    calc = pot.calculator(skin=args.skin, dtype=args.dtype)
    atoms.calc = calc
    atoms.set_velocities(args.initial_velocities)
    path = out / "ase_langevin.traj"
    traj = Trajectory(path, "w", atoms)
    dyn = Langevin(
        atoms, args.dt * units.fs, temperature_K=args.temperature,
        friction=args.friction / units.fs, fixcm=False, rng=np.random.default_rng(args.seed),
    )
    print(f"\n[ase] Langevin, friction {args.friction} /fs, {args.dtype}, skin {args.skin} Å")
    clock = {"t": time.perf_counter(), "step": 0}

    def report():
        now = time.perf_counter()
        steps = dyn.nsteps - clock["step"]
        speed = f"{1e3 * (now - clock['t']) / steps:7.1f} ms/step" if steps else "(start)"
        clock.update(t=now, step=dyn.nsteps)
        print(f"[ase] step {dyn.nsteps:6d}  t {dyn.nsteps * args.dt / 1000:8.3f} ps  "
              f"Epot {atoms.get_potential_energy():12.4f} eV  T {atoms.get_temperature():7.1f} K"
              f"  {speed}  rebuilds {calc.rebuilds}")

    dyn.attach(traj.write, interval=args.interval)
    dyn.attach(report, interval=args.interval)
    dyn.run(args.steps)
    traj.close()
    print(f"[ase] wrote {path} (neighbour list built {calc.rebuilds} times in {args.steps} steps)")


def run_jax_md(atoms, pot, args, out: Path) -> None:
    import jax
    import jax.numpy as jnp
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import Trajectory

    try:
        from jax_md import quantity, simulate
    except ImportError:
        print("[jax_md] skipped: jax-md is not installed (pip install 'jat[md]')")
        return
    import jat.md

    # jax-md's own float32 sums under x32, and an int64 scatter under x64, warn: harmless
    warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
    warnings.filterwarnings("ignore", message="scatter inputs have incompatible types")
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    pot = pot.with_dtype(args.dtype)
    system = jat.md.jax_md_system(pot, atoms, skin=args.skin)
    kT = args.temperature * units.kB
    init, apply = simulate.nvt_nose_hoover(
        system.energy_fn, system.shift_fn, dt=args.dt * units.fs, kT=kT, tau=args.tau * units.fs
    )
    R = jnp.asarray(system.positions)
    nbrs = system.neighbor_fn.allocate(R)
    masses = jnp.asarray(system.masses)
    velocities = jnp.asarray(args.initial_velocities @ system.rotation.T, R.dtype)
    state = init(jax.random.PRNGKey(args.seed), R, mass=masses,
                 momenta=velocities * masses[:, None], neighbor=nbrs)

    def observe(state, nbrs):
        energy = system.energy_fn(state.position, neighbor=nbrs)
        return energy, quantity.temperature(momentum=state.momentum, mass=state.mass)

    chunk = jat.md.make_chunk(apply, args.interval, observe)
    path = out / "jax_md_nose_hoover.traj"
    traj = Trajectory(path, "w")
    print(f"\n[jax_md] Nosé-Hoover chain, tau {args.tau} fs, {args.dtype}, skin {args.skin} Å, "
          f"{args.interval} steps per jitted chunk")
    done, regrown = 0, 0
    while done < args.steps:
        t0 = time.perf_counter()
        state, nbrs, (energy, temperature), again = jat.md.run_chunk(
            chunk, state, nbrs, system.neighbor_fn
        )
        regrown += again
        jax.block_until_ready(state.position)
        ms = 1e3 * (time.perf_counter() - t0) / args.interval
        done += args.interval
        frame = system.to_atoms(state.position, velocities=state.velocity)
        frame.calc = SinglePointCalculator(frame, energy=float(energy))
        traj.write(frame)
        print(f"[jax_md] step {done:6d}  t {done * args.dt / 1000:8.3f} ps  Epot "
              f"{float(energy):12.4f} eV  T {float(temperature) / units.kB:7.1f} K  "
              f"{ms:7.1f} ms/step{' (includes compilation)' if done == args.interval else ''}")
    traj.close()
    print(f"[jax_md] wrote {path} (neighbour list reallocated {regrown} times)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--engine", choices=["ase", "jax_md", "both"], default="both")
    add_structure_arguments(parser)
    parser.add_argument("--steps", type=int, default=2000, help="MD steps per engine")
    parser.add_argument("--dt", type=float, default=0.5, help="time step (fs)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    parser.add_argument("--tau", type=float, default=50.0, help="Nosé-Hoover time constant (fs)")
    parser.add_argument("--interval", type=int, default=20, help="steps between frames")
    parser.add_argument("--skin", type=float, default=0.5, help="neighbour-list skin (Å)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="md_ean_out", help="output directory")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.interval < 1:
        parser.error("--steps and --interval must be positive")

    pot, description = load_potential(args)
    atoms, path = load_ean(args.data_dir, args.index)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"potential: {description}")
    print(f"structure: configuration {args.index} of {path}: {len(atoms)} atoms, "
          f"cell {np.round(atoms.cell.lengths(), 3).tolist()} Å")
    print(f"{args.steps} steps of {args.dt} fs at {args.temperature} K")
    args.initial_velocities = initial_velocities(atoms, args.temperature, args.seed)
    if args.engine in ("ase", "both"):
        run_ase(atoms, pot, args, out)
    if args.engine in ("jax_md", "both"):
        run_jax_md(atoms, pot, args, out)


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    main()
