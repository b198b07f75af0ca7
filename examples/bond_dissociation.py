"""Pull one N–O bond of a nitrate in an EAN configuration apart and plot energy and bond force.

    python examples/bond_dissociation.py --model runs/ean-20261121-101500
    python examples/bond_dissociation.py --untrained --points 11            # smoke run

In the EAN box (first configuration of ``$JAT_DATA_DIR/ean/ean_15pairs_dft.jsonl``), the O of
one nitrate N–O bond (``--anion``: which nitrate, 0 = the first) is moved along the bond from
``--start`` to ``--stop`` Å from its N (minimum-image bond vector, periodic box); every other
atom stays fixed. At each distance r the script evaluates the energy E(r) and the force on the O
projected on the bond direction u, F_O·u (eV/Å; positive pushes the O away from the N), and
checks it against −dE/dr from finite differences of E. Writes a PNG with both panels (when
matplotlib is installed), a CSV table, and prints one JSON object on the last line.
Evaluated in float64 by default (``--dtype``), one ``JATCalculator`` for the scan.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jat.plotting import pyplot, save_figure
from jat.simulation.setup import (
    add_model_arguments,
    add_structure_arguments,
    load_ean,
    load_potential,
)


def find_bond(atoms, anion: int) -> tuple[int, int, np.ndarray]:
    """(index of N, index of O, unit vector N→O) of the first O of nitrate number ``anion``:
    an N with three O within 1.6 Å (minimum image)."""
    symbols = np.array(atoms.get_chemical_symbols())
    oxygens = np.flatnonzero(symbols == "O")
    nitrates = []
    for n in np.flatnonzero(symbols == "N"):
        d = atoms.get_distances(n, oxygens, mic=True)
        close = oxygens[d < 1.6]
        if len(close) == 3:
            nitrates.append((int(n), close))
    if not nitrates:
        raise SystemExit("no nitrate (N with three O within 1.6 Å) in this configuration")
    if not 0 <= anion < len(nitrates):
        raise SystemExit(f"--anion {anion}: this configuration has {len(nitrates)} nitrates")
    n, close = nitrates[anion]
    o = int(close[0])
    vec = atoms.get_distance(n, o, mic=True, vector=True)
    return n, o, vec / np.linalg.norm(vec)


def plot(r, energy, force, numeric, path: Path, title: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True)
    ax1.plot(r, energy - energy.min(), "o-", ms=3)
    ax1.set_ylabel("E(r) − min E (eV)")
    ax1.set_title(title)
    ax2.axhline(0.0, color="0.7", lw=0.8)
    ax2.plot(r, force, "o-", ms=3, label="F_O · u (model forces)")
    ax2.plot(r, numeric, "--", label="−dE/dr (finite differences)")
    ax2.set_xlabel("N–O distance r (Å)")
    ax2.set_ylabel("force along the bond (eV/Å)")
    ax2.legend()
    print(f"wrote {save_figure(fig, path, dpi=150)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    add_structure_arguments(parser)
    parser.add_argument("--anion", type=int, default=0, help="which nitrate (0 = the first)")
    parser.add_argument("--start", type=float, default=1.0, help="first N–O distance (Å)")
    parser.add_argument("--stop", type=float, default=3.0, help="last N–O distance (Å)")
    parser.add_argument("--points", type=int, default=81, help="distances in the scan")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--out", default="bond_dissociation", help="output prefix (.png, .csv)")
    args = parser.parse_args(argv)
    if args.points < 2 or not 0 < args.start < args.stop:
        parser.error("need --points >= 2 and 0 < --start < --stop")

    pot, description = load_potential(args)
    atoms, path = load_ean(args.data_dir, args.index)
    n, o, u = find_bond(atoms, args.anion)
    r0 = atoms.get_distance(n, o, mic=True)
    print(f"potential: {description}")
    print(f"structure: configuration {args.index} of {path} ({len(atoms)} atoms)")
    print(f"bond: N {n} – O {o}, r = {r0:.4f} Å in the configuration; scanning "
          f"{args.start}–{args.stop} Å in {args.points} points ({args.dtype})")

    calc = pot.calculator(dtype=args.dtype)
    atoms.calc = calc
    origin = atoms.positions[n].copy()
    r = np.linspace(args.start, args.stop, args.points)
    energy, force = np.empty_like(r), np.empty_like(r)
    for k, dist in enumerate(r):
        atoms.positions[o] = origin + dist * u
        energy[k] = atoms.get_potential_energy()
        force[k] = atoms.get_forces()[o] @ u
    numeric = -np.gradient(energy, r)
    inner = slice(1, -1)  # central differences only
    mismatch = float(np.max(np.abs(numeric[inner] - force[inner]))) if len(r) > 2 else 0.0
    k_min = int(np.argmin(energy))
    print(f"{'r (Å)':>8} {'E (eV)':>14} {'F·u (eV/Å)':>12} {'-dE/dr':>12}")
    for k in range(0, len(r), max(1, len(r) // 20)):
        print(f"{r[k]:8.3f} {energy[k]:14.5f} {force[k]:12.4f} {numeric[k]:12.4f}")
    print(f"minimum at r = {r[k_min]:.3f} Å; E(stop) − E(min) = {energy[-1] - energy[k_min]:.4f} "
          f"eV; max |F·u − (−dE/dr)| = {mismatch:.3g} eV/Å (finite-difference error, "
          f"step {r[1] - r[0]:.3f} Å); neighbour list built {calc.rebuilds} times")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv = out.with_suffix(".csv")
    np.savetxt(csv, np.column_stack([r, energy, force, numeric]), delimiter=",",
               header="r_angstrom,energy_eV,force_along_bond_eV_per_angstrom,minus_dE_dr",
               comments="")
    print(f"wrote {csv}")
    plot(r, energy, force, numeric, out.with_suffix(".png"),
         f"N–O bond of nitrate {args.anion} (N {n}, O {o}), EAN configuration {args.index}")
    print(json.dumps({"n": n, "o": o, "r_equilibrium_in_data": r0, "r_min": float(r[k_min]),
                      "dissociation_energy_to_stop_eV": float(energy[-1] - energy[k_min]),
                      "max_force_mismatch": mismatch}))


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    main()
