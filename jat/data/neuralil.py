"""Reader for NeuralIL's JSON-lines format (periodic, orthorhombic configurations).

One JSON object per line with ``Energy`` (eV, total), ``Positions`` (N×3, Å), ``Forces`` (N×3,
eV/Å) and ``Cell-Size`` (3 box lengths, Å); other keys are ignored. Species are not stored: the
configuration is n copies of the first composition unit, then n copies of the second, and so on
(for EAN, n cations ``N H H H C H H C H H H`` then n anions ``N O O O``).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jat.data.checks import PathLike, checked_symbols, float_array, require_file
from jat.data.structure import DataError, Structure

#: Ethylammonium nitrate: the cation C2H5NH3+ in NeuralIL's atom order, then the anion NO3-.
EAN_COMPOSITION = ("NHHHCHHCHHH", "NOOO")

Composition = str | Sequence[str | Sequence[str]]
_REQUIRED = ("Energy", "Positions", "Forces", "Cell-Size")


def read_neuralil(
    path: PathLike,
    composition: Composition = EAN_COMPOSITION,
    index: int | slice | None = None,
) -> Iterator[Structure]:
    """Stream the configurations of a NeuralIL ``.jsonl`` file as periodic Structures
    (Å, eV, eV/Å; orthorhombic cell from ``Cell-Size``; ``source`` is ``"file:line k"``).

    Args:
        path: the ``.jsonl`` file.
        composition: the units, each a string of element symbols (``"NHHHCHHCHHH"``, ``"ClO4"``)
            or a sequence of symbols; a single string is one unit. The number of copies n is
            inferred per line from the atom count.
        index: an ``int`` or ``slice`` of the configurations (non-blank lines); default all.

    Raises:
        FileNotFoundError: the file is missing (at the call).
        ValueError: a malformed composition (at the call).
        IndexError: an ``int`` index out of range.
        DataError: an empty file; a line that is not a JSON object, lacks a key, has wrong shapes,
            NaN/inf, a non-positive box, or an atom count that is not a whole number of units.
    """
    path = require_file(path)
    units = composition_units(composition)
    if index is not None and not isinstance(index, slice):
        index = operator.index(index)
    return _read(path, units, index)


def composition_units(composition: Composition) -> tuple[tuple[str, ...], ...]:
    """The composition as a tuple of units, each a tuple of element symbols."""
    from ase.symbols import string2symbols

    raw = (composition,) if isinstance(composition, str) else tuple(composition)
    units = []
    for unit in raw:
        try:
            symbols = string2symbols(unit) if isinstance(unit, str) else [str(s) for s in unit]
            units.append(checked_symbols(symbols, "composition"))
        except (DataError, ValueError) as err:
            problem = str(err) or "not a string of element symbols"
            raise ValueError(f"bad composition unit {unit!r}: {problem}") from None
    if not units or not all(units):
        raise ValueError(f"composition needs at least one non-empty unit, got {composition!r}")
    return tuple(units)


def composition_symbols(units: tuple[tuple[str, ...], ...], n_atoms: int) -> tuple[str, ...]:
    """Symbols of ``n_atoms`` atoms: n copies of each unit in turn; ValueError if n is not whole."""
    per_copy = sum(len(unit) for unit in units)
    copies, rest = divmod(n_atoms, per_copy)
    if rest or copies == 0:
        formula = " + ".join("".join(unit) for unit in units)
        raise ValueError(
            f"{n_atoms} atoms is not a positive whole number of composition units "
            f"({formula}, {per_copy} atoms each)"
        )
    return tuple(symbol for unit in units for symbol in unit * copies)


def _read(
    path: Path, units: tuple[tuple[str, ...], ...], index: int | slice | None
) -> Iterator[Structure]:
    count = 0
    for line_no, line in _lines(path, index):
        count += 1
        yield _structure(line, path, line_no, units)
    if count == 0 and index is None:
        raise DataError(f"{path}: no configurations (only blank lines)")


def _lines(path: Path, index: int | slice | None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the selected non-blank lines, in selection order."""
    if index is None:
        with path.open() as fh:
            yield from ((k, line) for k, line in enumerate(fh, 1) if line.strip())
        return
    with path.open() as fh:
        numbers = [k for k, line in enumerate(fh, 1) if line.strip()]
    if not numbers:
        raise DataError(f"{path}: no configurations (only blank lines)")
    if isinstance(index, slice):
        chosen = numbers[index]
    else:
        try:
            chosen = [numbers[index]]
        except IndexError:
            raise IndexError(
                f"{path}: configuration {index} out of range ({len(numbers)} configurations)"
            ) from None
    wanted = set(chosen)
    with path.open() as fh:
        text = {k: line for k, line in enumerate(fh, 1) if k in wanted}
    yield from ((k, text[k]) for k in chosen)


def _structure(
    line: str, path: Path, line_no: int, units: tuple[tuple[str, ...], ...]
) -> Structure:
    where = f"{path}: line {line_no}"
    entry = _entry(line, where)
    positions = float_array(entry["Positions"], "Positions", (None, 3), where)
    try:
        symbols = composition_symbols(units, len(positions))
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None
    forces = float_array(entry["Forces"], "Forces", positions.shape, where)
    box = float_array(entry["Cell-Size"], "Cell-Size", (3,), where)
    if np.any(box <= 0):
        raise DataError(f"{where}: Cell-Size must be 3 positive lengths, got {box.tolist()}")
    energy = float_array(entry["Energy"], "Energy", (), where)
    return Structure(
        symbols=symbols,
        positions=positions,
        cell=np.diag(box),
        pbc=(True, True, True),
        energy=float(energy),
        forces=forces,
        source=f"{path.name}:line {line_no}",
    )


def _entry(line: str, where: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [key for key in _REQUIRED if key not in entry]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}")
    return entry
