"""Build a JAT potential and print energy, forces and stress of a real structure.

    python examples/quickstart.py                 # EAN ionic-liquid box from ../shared/data
    python examples/quickstart.py --model schnet  # SchNet instead of JAT
    python examples/quickstart.py --data-dir DIR  # data elsewhere (or set JAT_DATA_DIR)

The parameters are random (training comes with ``python -m jat.train``); the point is the API:
a potential, an ASE calculator, and a save/load round trip. Without the data directory the script
falls back to a built-in structure: an ethanol molecule in a periodic 10 Å box.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def load_structure(data_dir: str | None):
    """The first EAN configuration (225 atoms, periodic), or the built-in fallback."""
    from ase.build import molecule

    from jat.data import data_dir as resolve
    from jat.data import read_ean

    path = resolve(data_dir) / "ean" / "ean_15pairs_dft.jsonl"
    if path.is_file():
        return read_ean(path, index=0)[0], f"EAN box, first configuration of {path}"
    atoms = molecule("CH3CH2OH")
    atoms.set_cell([10.0, 10.0, 10.0])
    atoms.center()
    atoms.pbc = True
    return atoms, f"built-in ethanol in a 10 Å box ({path} not found)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="jat", choices=["jat", "schnet"])
    parser.add_argument("--cutoff", type=float, default=5.0, help="cutoff in Å")
    parser.add_argument("--data-dir", default=None, help="reference data directory")
    args = parser.parse_args(argv)

    import jat

    atoms, source = load_structure(args.data_dir)
    kwargs = {"layers": 7, "width": 48, "heads": 1} if args.model == "jat" else {}
    pot = jat.Potential.create(args.model, ["H", "C", "N", "O"], cutoff=args.cutoff, **kwargs)
    print(f"structure: {source}: {atoms.get_chemical_formula()}, {len(atoms)} atoms")
    print(f"model: {args.model} {kwargs}, cutoff {args.cutoff} Å, random parameters")

    atoms.calc = pot.calculator()
    t0 = time.perf_counter()
    energy = atoms.get_potential_energy()
    t1 = time.perf_counter()
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    atoms.positions += 0.01
    atoms.get_forces()
    t2 = time.perf_counter()
    print(f"energy: {energy:.6f} eV  (first call, includes compilation: {t1 - t0:.2f} s)")
    print(f"forces: shape {forces.shape}, max |F| {np.abs(forces).max():.4f} eV/Å, "
          f"sum {np.abs(forces.sum(0)).max():.2e} eV/Å (should be ~0)")
    print("forces of the first 3 atoms (eV/Å):")
    print(np.array2string(forces[:3], precision=5))
    print("stress (eV/Å³):")
    print(np.array2string(stress, precision=6))
    print(f"next step (moved atoms, cached compilation): {(t2 - t1) * 1e3:.1f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        pot.save(f"{tmp}/potential")
        again = jat.Potential.load(f"{tmp}/potential")
        atoms.positions -= 0.01
        diff = abs(again.energy(atoms) - energy)
        print(f"save/load round trip: energy difference {diff:.2e} eV")


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any work: see jat.runtime
    main()
