"""Setting up a simulation from the command line: a potential (trained or a fresh one for smoke
runs), an EAN configuration of the reference data, Maxwell–Boltzmann velocities. Used by the MD
examples and benchmarks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

UNTRAINED = {"model": "jat", "species": ("H", "C", "N", "O"), "cutoff": 5.0,
             "layers": 3, "width": 32, "heads": 1}
EAN_FILE = Path("ean") / "ean_15pairs_dft.jsonl"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model RUN_DIR`` or ``--untrained`` (one is required)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", metavar="RUN_DIR",
                       help="a potential or a python -m jat.train run directory (loads best/)")
    group.add_argument("--untrained", action="store_true",
                       help="a freshly initialised JAT (3 x 32, 5 Å): a smoke run, no physics")


def add_structure_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--index`` of the EAN configuration to start from."""
    parser.add_argument("--data-dir", default=None, help="data directory (default: JAT_DATA_DIR)")
    parser.add_argument("--index", type=int, default=0, help="EAN configuration to start from")


def load_potential(args: argparse.Namespace) -> tuple[Any, str]:
    """(potential, description) from ``--model`` or ``--untrained``."""
    import jat

    if args.untrained:
        spec = dict(UNTRAINED)
        pot = jat.Potential.create(spec.pop("model"), spec.pop("species"), spec.pop("cutoff"),
                                   seed=0, **spec)
        return pot, "untrained JAT 3 x 32, 5 Å (random parameters)"
    return jat.Potential.load(args.model), f"{args.model}"


def load_ean(data_dir: str | None, index: int = 0) -> tuple[Any, Path]:
    """(ASE Atoms without labels, file) of EAN configuration ``index`` of the reference data;
    SystemExit with the path when the data is missing."""
    from jat.data import data_dir as resolve
    from jat.data import read_ean

    path = resolve(data_dir) / EAN_FILE
    if not path.is_file():
        raise SystemExit(f"EAN data not found at {path}: pass --data-dir or set JAT_DATA_DIR")
    atoms = read_ean(path, index=index)[0]
    atoms.calc = None
    return atoms, path


def initial_velocities(atoms: Any, temperature: float, seed: int) -> np.ndarray:
    """(N, 3) Maxwell–Boltzmann velocities at ``temperature`` K (ASE units), without
    centre-of-mass motion, seeded."""
    from ase.md import velocitydistribution as vd

    start = atoms.copy()
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(start, temperature_K=temperature, rng=np.random.default_rng(seed))
    vd.Stationary(start)
    return start.get_velocities()


__all__ = [
    "add_model_arguments",
    "add_structure_arguments",
    "initial_velocities",
    "load_ean",
    "load_potential",
]
