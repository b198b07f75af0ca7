"""EAN (ethylammonium nitrate) in NeuralIL's JSON-lines format, as ASE ``Atoms``.

A thin layer over :func:`jat.data.neuralil.read_neuralil` with the EAN composition: all cations
``N H H H C H H C H H H`` first, then all anions ``N O O O`` (15 atoms per ion pair).
"""

from __future__ import annotations

from typing import Any

from jat.data.checks import PathLike
from jat.data.neuralil import EAN_COMPOSITION, composition_symbols, read_neuralil

CATION = ("N", "H", "H", "H", "C", "H", "H", "C", "H", "H", "H")
ANION = ("N", "O", "O", "O")
EAN_SPECIES = ("H", "C", "N", "O")
_UNITS = (CATION, ANION)  # EAN_COMPOSITION, split into symbols


def ean_symbols(n_atoms: int) -> list[str]:
    """Chemical symbols of an EAN configuration with ``n_atoms`` atoms (15 atoms per ion pair);
    ValueError if ``n_atoms`` is not a whole number of ion pairs."""
    return list(composition_symbols(_UNITS, n_atoms))


def read_ean(path: PathLike, index: slice | int | None = None) -> list[Any]:
    """EAN configurations as ASE ``Atoms`` with a single-point calculator holding the DFT energy
    (eV) and forces (eV/Å); periodic orthorhombic box (Å).

    Args:
        path: the ``.jsonl`` file.
        index: an ``int`` or ``slice`` of the configurations to keep (default: all).

    Raises:
        FileNotFoundError: the file is missing.
        DataError: (a ValueError) naming the file, the line and the problem for a malformed entry.
    """
    return [s.to_atoms() for s in read_neuralil(path, EAN_COMPOSITION, index=index)]
