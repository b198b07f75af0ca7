"""Checks and constructors shared by the readers: files, arrays, element symbols, molecules.

Every failure is a :class:`jat.data.DataError` naming the file and the entry.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jat.data.structure import DataError, Structure

PathLike = str | os.PathLike


def require_file(path: PathLike) -> Path:
    """``path`` as a ``Path``; FileNotFoundError if it is missing, DataError if it is empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    return path


def float_array(
    value: Any, name: str, shape: tuple[int | None, ...], where: str, finite: bool = True
) -> np.ndarray:
    """``value`` as a float64 array of ``shape`` (``None`` matches any length), finite unless
    ``finite=False``; otherwise DataError ``"{where}: {name} has shape ..., expected ..."``."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {name} is not a numeric array") from None
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        raise DataError(f"{where}: {name} has shape {array.shape}, expected {format_shape(shape)}")
    if finite and not np.all(np.isfinite(array)):
        raise DataError(f"{where}: {name} has non-finite values (NaN or inf)")
    return array


def format_shape(shape: tuple[int | None, ...]) -> str:
    """``(225, 3)``, ``(N, 3)`` or ``(3,)``."""
    dims = ["N" if dim is None else str(dim) for dim in shape]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def first_nonfinite(array: np.ndarray) -> int | None:
    """Index along axis 0 of the first entry with a NaN or inf, or None."""
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def checked_symbols(symbols: Iterable[Any], where: str) -> tuple[str, ...]:
    """Element symbols (str or bytes, surrounding blanks ignored); DataError for unknown ones."""
    from ase.data import atomic_numbers

    names = tuple(
        (s.decode("ascii", "replace") if isinstance(s, bytes) else str(s)).strip() for s in symbols
    )
    unknown = sorted({s for s in names if atomic_numbers.get(s, 0) == 0})
    if unknown:
        raise DataError(f"{where}: unknown element symbol(s) {unknown}")
    return names


def symbols_from_numbers(numbers: Any, where: str, name: str = "atomic numbers") -> tuple[str, ...]:
    """Element symbols for atomic numbers 1…118; DataError for anything else."""
    from ase.data import chemical_symbols

    z = np.asarray(numbers)
    if z.ndim != 1 or not np.issubdtype(z.dtype, np.integer):
        raise DataError(f"{where}: {name} must be a 1-D integer array, got {z.dtype} {z.shape}")
    unknown = sorted({int(v) for v in z if not 0 < v < len(chemical_symbols)})
    if unknown:
        raise DataError(f"{where}: unknown atomic number(s) {unknown}")
    return tuple(chemical_symbols[int(v)] for v in z)


def molecule(
    symbols: tuple[str, ...],
    positions: np.ndarray,
    energy: float | None,
    forces: np.ndarray | None = None,
    source: str = "",
    group: str = "",
    properties: Mapping[str, float | np.ndarray] | None = None,
) -> Structure:
    """A non-periodic Structure: zero cell, no pbc (``properties``: see :class:`Structure`)."""
    return Structure(
        symbols=symbols,
        positions=positions,
        cell=np.zeros((3, 3)),
        pbc=(False, False, False),
        energy=energy,
        forces=forces,
        source=source,
        group=group,
        properties={} if properties is None else dict(properties),
    )
