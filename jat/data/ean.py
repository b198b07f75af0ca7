"""Reader for the EAN (ethylammonium nitrate) ionic-liquid data in NeuralIL's JSON-lines format.

One JSON object per line with ``Energy`` (eV), ``Positions`` (N×3, Å), ``Forces`` (N×3, eV/Å) and
``Cell-Size`` (3 box lengths, Å, orthorhombic, periodic). Species are not stored: the atom order
is fixed, all cations ``N H H H C H H C H H H`` first, then all anions ``N O O O``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CATION = ("N", "H", "H", "H", "C", "H", "H", "C", "H", "H", "H")
ANION = ("N", "O", "O", "O")
EAN_SPECIES = ("H", "C", "N", "O")
_REQUIRED = ("Energy", "Positions", "Forces", "Cell-Size")


def ean_symbols(n_atoms: int) -> list[str]:
    """Chemical symbols of an EAN configuration with ``n_atoms`` atoms (15 atoms per ion pair)."""
    pairs, rest = divmod(n_atoms, len(CATION) + len(ANION))
    if rest:
        raise ValueError(f"{n_atoms} atoms is not a whole number of EAN ion pairs (15 atoms each)")
    return list(CATION * pairs + ANION * pairs)


def _entry_error(path: Path, line_no: int, problem: str) -> ValueError:
    return ValueError(f"{path}: line {line_no}: {problem}")


def read_ean(path: str | os.PathLike, index: slice | int | None = None) -> list:
    """Read EAN configurations as ASE ``Atoms`` with a single-point calculator holding the DFT
    energy (eV) and forces (eV/Å).

    Args:
        path: the ``.jsonl`` file.
        index: optional ``int`` or ``slice`` of the configurations to keep (default: all).

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: naming the file, the line and the problem for a malformed entry.
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EAN data file not found: {path}")
    with path.open() as fh:
        lines = [(k + 1, line) for k, line in enumerate(fh) if line.strip()]
    if isinstance(index, int):
        lines = [lines[index]]
    elif isinstance(index, slice):
        lines = lines[index]
    frames = []
    for line_no, line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise _entry_error(path, line_no, f"not valid JSON ({err.msg})") from None
        missing = [k for k in _REQUIRED if k not in entry]
        if missing:
            raise _entry_error(path, line_no, f"missing key(s) {missing}")
        positions = np.asarray(entry["Positions"], dtype=np.float64)
        forces = np.asarray(entry["Forces"], dtype=np.float64)
        box = np.asarray(entry["Cell-Size"], dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise _entry_error(path, line_no, f"Positions has shape {positions.shape}, not (N, 3)")
        if forces.shape != positions.shape:
            raise _entry_error(
                path, line_no, f"Forces shape {forces.shape} != Positions shape {positions.shape}"
            )
        if box.shape != (3,) or np.any(box <= 0):
            raise _entry_error(path, line_no, f"Cell-Size must be 3 positive lengths, got {box}")
        if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(forces))):
            raise _entry_error(path, line_no, "non-finite positions or forces")
        try:
            symbols = ean_symbols(len(positions))
        except ValueError as err:
            raise _entry_error(path, line_no, str(err)) from None
        atoms = Atoms(symbols, positions=positions, cell=np.diag(box), pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=float(entry["Energy"]), forces=forces)
        frames.append(atoms)
    return frames
