"""Offline active learning on the built-in EAN box: committee, guarded NVT, GFN2-xTB labels.

    pip install tblite                                     # or: pip install -e ".[al]"
    python examples/active_learning.py                     # 3 rounds, runs/active-learning-<time>
    python examples/active_learning.py --quick --run-dir /tmp/al   # smoke run, a few minutes

The system is the built-in periodic ethylammonium-nitrate box (45 atoms, 3 ion pairs,
``jat/data/builtin/ean_xtb.extxyz``: 32 frames of GFN2-xTB Langevin MD at 450 K). Each round:

1. train a deep committee (SchNet, ``--members`` 4) from scratch on the training set so far
   (round 0: the shipped frames) with ``jat.training.train``;
2. test it on a held-out set labelled with GFN2-xTB once at the start (``--holdout md``: frames
   of a GFN2-xTB Langevin run continuing the shipped trajectory; ``shipped``: the last shipped
   frames, kept out of training): force MAE per component and mean force σ;
3. run ``--md-runs`` NVT runs (ASE Langevin, ``--temperature`` 450 K, from the first and the last of
   round 0's training frames and evenly between, with the same Maxwell-Boltzmann velocities and
   seeds in every round) with the committee's calculator and its uncertainty guard
   (``jat.uncertainty.Guard``, largest per-atom force σ above ``--guard`` eV/Å), each until the
   guard fires, the box falls apart (non-finite positions, atoms closer than ``--min-distance`` Å,
   or a temperature above 4x the target) or ``--max-steps``; the round's figure is the longest
   stable time (ps) of its runs;
4. pick ``--add`` frames of those runs with the largest max per-atom force σ, at least
   ``--min-separation`` MD steps apart within a run (greedy, most uncertain first; the
   separation is halved while fewer frames fit, down to two samples apart), label them
   with GFN2-xTB (tblite) and append them to ``train.extxyz`` in the run directory.

After ``--rounds`` rounds of 1-4 the last committee is trained, tested and run once more (steps
1-3), so rounds 0 .. ``--rounds`` each have a figure. Every round trains from scratch with the
same seed: the one-cycle schedule and a committee's spread are those of a fresh start, and the
rounds differ only in their training data, so their figures compare the data, not how many
times a model has been trained on. The σ is the committee's raw spread (no calibration), the
same measure in every round.

Prints one line per round, writes ``rounds.jsonl`` (one JSON object per round), ``summary.json``,
``active_learning.png`` (force MAE and stable time per round), the training set, the held-out
set, the sampled MD frames and each round's committee (``round-N/model``, a training run
directory) into the run directory, and prints the summary as JSON on the last line of stdout.
GFN2-xTB is not a jat dependency: without tblite the script exits and says ``pip install tblite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from xtb_labels import frozen, gfn2_calculator, import_tblite, single_point

QUICK = {  # --quick: a smoke run of every stage (small model, short MD, shipped held-out set)
    "rounds": 1, "members": 2, "features": 8, "interactions": 1, "epochs": 4,
    "holdout": "shipped", "holdout_frames": 4, "md_runs": 1, "max_steps": 60,
    "sample_every": 5, "add": 2, "min_separation": 10,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run-dir", type=Path, default=None,
                   help="output directory, new or empty (default runs/active-learning-<time>)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of MD, labelling and training")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: " + ", ".join(f"{k.replace('_', '-')} {v}"
                                                  for k, v in QUICK.items())
                   + " (options given explicitly still win)")
    p.add_argument("--seed", type=int, default=0, help="seeds training, MD and the held-out run")
    g = p.add_argument_group("committee")
    g.add_argument("--members", type=int, default=4, help="deep committee size K")
    g.add_argument("--features", type=int, default=32, help="SchNet features")
    g.add_argument("--interactions", type=int, default=2, help="SchNet interaction blocks")
    g.add_argument("--cutoff", type=float, default=5.0, help="neighbour cutoff (Å)")
    g.add_argument("--epochs", type=int, default=100, help="training epochs per round")
    g.add_argument("--batch-size", type=int, default=4, help="structures per training step")
    g.add_argument("--bootstrap", action="store_true",
                   help="each member trains on its own bootstrap resample")
    g = p.add_argument_group("held-out set")
    g.add_argument("--holdout", choices=["md", "shipped"], default="md",
                   help="md: GFN2-xTB Langevin frames continuing the shipped trajectory; "
                        "shipped: the last shipped frames, kept out of training")
    g.add_argument("--holdout-frames", type=int, default=6, help="held-out frames")
    g.add_argument("--holdout-stride", type=int, default=10,
                   help="--holdout md: xTB MD steps between held-out frames")
    g.add_argument("--holdout-skip", type=int, default=20,
                   help="--holdout md: xTB MD steps run before the first held-out frame")
    g.add_argument("--holdout-file", type=Path, default=None,
                   help="reuse a labelled held-out extxyz (e.g. RUN/holdout.extxyz of an "
                        "earlier run) instead of making one")
    g = p.add_argument_group("molecular dynamics")
    g.add_argument("--temperature", type=float, default=450.0, help="Langevin temperature (K)")
    g.add_argument("--timestep", type=float, default=0.5, help="time step (fs)")
    g.add_argument("--friction", type=float, default=0.02, help="Langevin friction (1/fs)")
    g.add_argument("--md-runs", type=int, default=2,
                   help="NVT runs per round (different start frames and seeds, the same in "
                        "every round)")
    g.add_argument("--max-steps", type=int, default=6000, help="step limit of each NVT run")
    g.add_argument("--guard", type=float, default=0.5,
                   help="stop when the largest per-atom force σ passes this (eV/Å)")
    g.add_argument("--min-distance", type=float, default=0.6,
                   help="stop when two atoms come closer than this (Å)")
    g.add_argument("--sample-every", type=int, default=10,
                   help="MD steps between the frames kept as candidates")
    g = p.add_argument_group("selection")
    g.add_argument("--add", type=int, default=8, help="frames labelled and added per round")
    g.add_argument("--min-separation", type=int, default=100,
                   help="MD steps between any two frames picked from one run; halved while "
                        "fewer than --add frames fit, down to 2 x --sample-every")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)  # options given explicitly still win
    args = p.parse_args(argv)
    for name in ("members", "epochs", "holdout_frames", "md_runs", "max_steps",
                 "sample_every", "add", "batch_size", "features", "interactions",
                 "holdout_stride"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.members < 2:
        p.error("--members must be at least 2: a committee's σ needs two members")
    if args.rounds < 0 or args.min_separation < 0 or args.holdout_skip < 0:
        p.error("--rounds, --min-separation and --holdout-skip must be >= 0")
    if not (args.guard > 0 and args.temperature > 0 and args.timestep > 0):
        p.error("--guard, --temperature and --timestep must be positive")
    return args


# ------------------------------------------------------------------------------ data


def read_frames(path):
    from ase.io import read

    return read(path, ":")


def write_frames(path: Path, frames) -> None:
    from ase.io import write

    write(path, frames, format="extxyz")


def maxwell_boltzmann(atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` K, total momentum removed."""
    from ase import units
    from ase.md.velocitydistribution import Stationary

    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(np.sqrt(masses * units.kB * temperature)
                      * rng.standard_normal((len(atoms), 3)))
    Stationary(atoms)


def xtb_holdout(start, args, log) -> list:
    """Held-out frames from GFN2-xTB Langevin MD at ``args.temperature`` from ``start`` (its
    momenta kept when it has them): ``holdout_skip`` steps, then a frame every
    ``holdout_stride`` steps."""
    from ase import units
    from ase.md.langevin import Langevin

    atoms = start.copy()
    atoms.calc = gfn2_calculator()
    if not np.any(atoms.get_momenta()):
        maxwell_boltzmann(atoms, args.temperature, np.random.default_rng(args.seed + 1000))
    dyn = Langevin(atoms, timestep=args.timestep * units.fs, temperature_K=args.temperature,
                   friction=args.friction / units.fs, fixcm=False,
                   rng=np.random.default_rng(args.seed + 1000))
    t0 = time.perf_counter()
    if args.holdout_skip:
        dyn.run(args.holdout_skip)
    frames = []
    for k in range(args.holdout_frames):
        dyn.run(args.holdout_stride)
        frames.append(frozen(atoms))
        log(f"  held-out frame {k + 1}/{args.holdout_frames}: t = "
            f"{dyn.nsteps * args.timestep:.0f} fs, T = {atoms.get_temperature():.0f} K, "
            f"{time.perf_counter() - t0:.0f} s")
    return frames


# ------------------------------------------------------------------------------ training


def train_committee(train_file: Path, run_dir: Path, args):
    from jat.config import config_from_dict
    from jat.training import train

    cfg = config_from_dict({
        "name": run_dir.parent.name,
        "run_dir": str(run_dir),
        "seed": args.seed,
        "data": {"train": str(train_file), "split": {"validation": 0.1}},
        "model": {
            "name": "schnet", "cutoff": args.cutoff, "features": args.features,
            "interactions": args.interactions,
            "ensemble": {"kind": "deep", "members": args.members, "bootstrap": args.bootstrap},
        },
        "training": {"epochs": args.epochs, "batch_size": args.batch_size},
        "logging": {"progress": "none"},
    })
    return train(cfg)


def evaluate(pot, frames) -> dict:
    """Force MAE and RMSE per component, mean force σ per component and mean per-atom σ
    (eV/Å) and energy MAE per atom (eV/atom) of the committee on labelled ``frames``."""
    from jat.uncertainty import atom_force_std

    results = pot.compute_batch(frames, stress=False)
    pairs = list(zip(results, frames, strict=True))
    errors = np.concatenate([r.forces - f.get_forces() for r, f in pairs])
    std = np.concatenate([r.forces_std for r in results])
    energy = [abs(r.energy - f.get_potential_energy()) / len(f) for r, f in pairs]
    return {
        "forces_mae": float(np.mean(np.abs(errors))),
        "forces_rmse": float(np.sqrt(np.mean(errors**2))),
        "forces_std_mean": float(np.mean(std)),
        "atom_force_std_mean": float(np.mean(atom_force_std(std))),
        "energy_atom_mae": float(np.mean(energy)),
    }


# ------------------------------------------------------------------------------ MD


@dataclasses.dataclass
class Candidate:
    run: int
    step: int
    sigma: float  # largest per-atom force σ, eV/Å
    atoms: object


@dataclasses.dataclass
class MDResult:
    run: int
    start_frame: int
    steps: int  # completed stable steps
    time_ps: float
    stopped_by: str  # "guard", "min-distance", "temperature", "non-finite", "steps"
    detail: str
    candidates: list


class Unstable(Exception):
    pass


def guarded_nvt(pot, start, run: int, start_frame: int, args) -> MDResult:
    """NVT (ASE Langevin) with the committee's guarded calculator until the guard fires, the
    box falls apart or ``args.max_steps``; frames every ``args.sample_every`` steps kept as
    candidates with their largest per-atom force σ."""
    from ase import units
    from ase.md.langevin import Langevin

    from jat.uncertainty import Guard, UncertaintyError, atom_force_std

    atoms = start.copy()
    atoms.info.clear()
    rng = np.random.default_rng([args.seed, run])  # the same start in every round
    maxwell_boltzmann(atoms, args.temperature, rng)
    atoms.calc = pot.calculator(guard=Guard(args.guard, action="stop"))
    dyn = Langevin(atoms, timestep=args.timestep * units.fs, temperature_K=args.temperature,
                   friction=args.friction / units.fs, fixcm=False, rng=rng)
    candidates: list[Candidate] = []

    def observe():
        positions = atoms.get_positions()
        if not np.all(np.isfinite(positions)):
            raise Unstable("non-finite", "positions are not finite")
        d = atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)]
        if d.min() < args.min_distance:
            raise Unstable("min-distance", f"two atoms {d.min():.2f} Å apart")
        temperature = atoms.get_temperature()
        if temperature > 4 * args.temperature:
            raise Unstable("temperature", f"T = {temperature:.0f} K")
        sigma = float(atom_force_std(atoms.calc.results["forces_std"]).max())
        candidates.append(Candidate(run, dyn.nsteps, sigma, atoms.copy()))

    dyn.attach(observe, interval=args.sample_every)
    stopped_by, detail = "steps", f"reached the step limit of {args.max_steps}"
    try:
        dyn.run(args.max_steps)
    except UncertaintyError as err:
        stopped_by = "guard"
        detail = f"atom {err.atom}: force σ {err.value:.3f} eV/Å > {err.threshold:g}"
        # the configuration the guard stopped at is the most uncertain one of the run
        candidates.append(Candidate(run, dyn.nsteps + 1, err.value, atoms.copy()))
    except Unstable as err:
        stopped_by, detail = err.args
        candidates = [c for c in candidates if c.step < dyn.nsteps]
    # stable up to the last check passed (an Unstable is seen up to sample_every steps late)
    steps = dyn.nsteps if stopped_by in ("steps", "guard") else (
        candidates[-1].step if candidates else 0)
    for c in candidates:
        c.atoms.calc = None
        c.atoms.info.update(md_run=c.run, md_step=c.step, max_force_std=c.sigma)
    return MDResult(run, start_frame, steps, steps * args.timestep / 1000.0, stopped_by, detail,
                    candidates)


def select(candidates: list[Candidate], n: int, min_separation: int,
           floor: int) -> tuple[list[Candidate], int]:
    """Up to ``n`` candidates, most uncertain first, any two of one run at least
    ``min_separation`` steps apart; while fewer than ``n`` fit (short runs), the separation is
    halved, down to ``floor`` steps (never two consecutive samples). Returns the frames and the
    separation the last of them needed."""
    chosen: list[Candidate] = []
    separation = max(min_separation, floor)
    while True:
        for c in sorted(candidates, key=lambda c: -c.sigma):
            if len(chosen) == n:
                break
            if any(c is o for o in chosen):
                continue
            if all(o.run != c.run or abs(o.step - c.step) >= separation for o in chosen):
                chosen.append(c)
        if len(chosen) == n or separation <= floor:
            return chosen, separation
        separation = max(separation // 2, floor)


# ------------------------------------------------------------------------------ report


def plot(rows: list[dict], path: Path) -> str | None:
    from jat.plotting import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None
    r = [row["round"] for row in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.plot(r, [row["heldout_forces_mae"] for row in rows], "o-", label="force MAE")
    ax1.plot(r, [row["heldout_forces_std_mean"] for row in rows], "s--", label="mean force σ")
    ax1.set_xlabel("round")
    ax1.set_ylabel("held-out GFN2-xTB set (eV/Å)")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax2.plot(r, [row["stable_time_ps"] for row in rows], "o-", label="longest")
    for k, row in enumerate(rows):
        ax2.plot([r[k]] * len(row["md_runs"]), [m["time_ps"] for m in row["md_runs"]], "k.",
                 label="each run" if k == 0 else None)
    ax2.set_xlabel("round")
    ax2.set_ylabel("stable NVT time (ps)")
    ax2.set_ylim(bottom=0)
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xticks(r)
    fig.suptitle("active learning on the EAN box (GFN2-xTB labels, NVT at "
                 f"{rows[0]['temperature_K']:g} K)")
    return save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    import_tblite()  # before any work: exits with the installation hint when tblite is missing

    from jat.data.readers import BUILTIN

    t_start = time.perf_counter()
    run_dir = args.run_dir or Path("runs") / f"active-learning-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = run_dir.resolve()
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        sys.exit(f"error: {run_dir} exists and is not an empty directory; give a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, flush=True)

    shipped = read_frames(BUILTIN)
    log(f"active learning in {run_dir}: {len(shipped)} shipped GFN2-xTB frames of "
        f"{len(shipped[0])} atoms; {args.members}-member SchNet committee; "
        f"{args.rounds} rounds; guard {args.guard:g} eV/Å; NVT {args.temperature:g} K")
    if args.holdout_file is not None:
        holdout = read_frames(args.holdout_file)
        train_frames = list(shipped)
        source = f"file {args.holdout_file}"
    elif args.holdout == "shipped":
        if args.holdout_frames >= len(shipped):
            sys.exit(f"error: --holdout-frames must be below the {len(shipped)} shipped frames")
        holdout = shipped[-args.holdout_frames:]
        train_frames = shipped[:-args.holdout_frames]
        source = f"the last {len(holdout)} shipped frames"
    else:
        log(f"labelling the held-out set: GFN2-xTB Langevin MD from the last shipped frame "
            f"({args.holdout_skip} + {args.holdout_frames} x {args.holdout_stride} steps)")
        holdout = xtb_holdout(shipped[-1], args, log)
        train_frames = list(shipped)
        source = "GFN2-xTB MD continuing the shipped trajectory"
    write_frames(run_dir / "holdout.extxyz", holdout)
    log(f"held-out set: {len(holdout)} frames ({source}), {run_dir / 'holdout.extxyz'}")

    train_file = run_dir / "train.extxyz"
    starts = list(train_frames)  # MD starts: round 0's training frames, never held-out ones
    xtb = gfn2_calculator()
    rows: list[dict] = []
    rounds_file = run_dir / "rounds.jsonl"
    for rnd in range(args.rounds + 1):
        rdir = run_dir / f"round-{rnd}"
        rdir.mkdir()
        write_frames(train_file, train_frames)
        t0 = time.perf_counter()
        result = train_committee(train_file, rdir / "model", args)
        pot = result.potential
        t_train = time.perf_counter() - t0
        metrics = evaluate(pot, holdout)
        t0 = time.perf_counter()
        runs = []
        for k in range(args.md_runs):
            start_frame = (k * (len(starts) - 1)) // max(args.md_runs - 1, 1)
            runs.append(guarded_nvt(pot, starts[start_frame], k, start_frame, args))
        t_md = time.perf_counter() - t0
        candidates = [c for m in runs for c in m.candidates]
        if candidates:
            write_frames(rdir / "md_samples.extxyz", [c.atoms for c in candidates])
        added, failed = [], 0
        t0 = time.perf_counter()
        if rnd < args.rounds:
            picked, separation = select(candidates, args.add, args.min_separation,
                                        2 * args.sample_every)
            for c in picked:
                try:
                    frame = single_point(c.atoms, xtb)
                except Exception as err:  # an SCF that does not converge on a broken frame
                    failed += 1
                    log(f"  GFN2-xTB failed on run {c.run} step {c.step}: {err}")
                    xtb = gfn2_calculator()
                    continue
                frame.info.update(md_run=c.run, md_step=c.step, max_force_std=c.sigma,
                                  round=rnd)
                added.append(frame)
            if added:
                write_frames(rdir / "added.extxyz", added)
        t_label = time.perf_counter() - t0
        row = {
            "round": rnd,
            "train_frames": len(train_frames),
            "heldout_frames": len(holdout),
            **{f"heldout_{k}": v for k, v in metrics.items()},
            "validation_forces_mae": result.summary.get("validation", {}).get("forces_mae"),
            "stable_time_ps": max(m.time_ps for m in runs),
            "mean_stable_time_ps": float(np.mean([m.time_ps for m in runs])),
            "md_runs": [{"start_frame": m.start_frame, "steps": m.steps, "time_ps": m.time_ps,
                         "stopped_by": m.stopped_by, "detail": m.detail} for m in runs],
            "temperature_K": args.temperature,
            "frames_added": len(added),
            "added_max_force_std": [round(float(f.info["max_force_std"]), 4) for f in added],
            "selection_separation_steps": separation if rnd < args.rounds else None,
            "labelling_failures": failed,
            "seconds": {"train": round(t_train, 1), "md": round(t_md, 1),
                        "label": round(t_label, 1)},
        }
        rows.append(row)
        with open(rounds_file, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        stops = ", ".join(f"{m.time_ps:.3f} ps ({m.stopped_by})" for m in runs)
        log(f"round {rnd}: {len(train_frames)} training frames; held-out force MAE "
            f"{metrics['forces_mae']:.4f} eV/Å, mean σ {metrics['forces_std_mean']:.4f} eV/Å; "
            f"stable NVT {row['stable_time_ps']:.3f} ps [{stops}]; added {len(added)} frames "
            f"(train {t_train:.0f} s, MD {t_md:.0f} s, label {t_label:.0f} s)")
        train_frames = train_frames + added

    first, last = rows[0], rows[-1]
    mae_drop = 1.0 - last["heldout_forces_mae"] / first["heldout_forces_mae"]
    ratio = (last["stable_time_ps"] / first["stable_time_ps"] if first["stable_time_ps"] > 0
             else math.inf)
    capped = any(m["stopped_by"] == "steps" for m in first["md_runs"])
    summary = {
        "run_dir": str(run_dir),
        "rounds": [{k: row[k] for k in ("round", "train_frames", "heldout_forces_mae",
                                        "heldout_forces_std_mean", "stable_time_ps",
                                        "frames_added")} for row in rows],
        "forces_mae_reduction": mae_drop,
        "stable_time_ratio": ratio if math.isfinite(ratio) else None,
        "round0_reached_step_limit": capped,
        "targets": {"forces_mae_reduction_30pct": mae_drop >= 0.30,
                    "stable_time_4x": ratio >= 4.0},
        "plot": plot(rows, run_dir / "active_learning.png"),
        "seconds": round(time.perf_counter() - t_start, 1),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"after {args.rounds} rounds: held-out force MAE {first['heldout_forces_mae']:.4f} -> "
        f"{last['heldout_forces_mae']:.4f} eV/Å ({100 * mae_drop:+.0f} % reduction), stable NVT "
        f"{first['stable_time_ps']:.3f} -> {last['stable_time_ps']:.3f} ps "
        f"(x{ratio:.2f}{', round 0 hit the step limit' if capped else ''})")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    raise SystemExit(main())
