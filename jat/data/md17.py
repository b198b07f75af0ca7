"""Reader for sGDML/MD17 ``.npz`` data sets (one molecule, many frames, kcal/mol units).

Arrays: ``R`` (n, N, 3) Å, ``z`` (N,) atomic numbers, ``E`` (n,) or (n, 1) kcal/mol, optional
``F`` (n, N, 3) kcal/mol/Å. Periodic sGDML sets (with a ``lattice``) are not supported.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jat.data.checks import (
    PathLike,
    first_nonfinite,
    float_array,
    molecule,
    require_file,
    symbols_from_numbers,
)
from jat.data.structure import DataError, Structure

_REQUIRED = ("R", "z", "E")


def read_md17(path: PathLike) -> Iterator[Structure]:
    """Stream the frames of an sGDML/MD17 ``.npz`` file as non-periodic Structures in Å, eV and
    eV/Å (energies and forces converted from kcal/mol with ``ase.units.kcal / ase.units.mol``;
    forces None when the file has no ``F``; ``source`` is ``"file:frame i"``).

    Raises:
        FileNotFoundError: the file is missing (at the call).
        DataError: not an ``.npz`` archive, no frames, a missing ``R``/``z``/``E``, wrong shapes,
            unknown atomic numbers, NaN/inf (naming the frame), or a ``lattice`` (periodic data).
    """
    path = require_file(path)
    return _read(path)


def _read(path: Path) -> Iterator[Structure]:
    from ase.units import kcal, mol

    arrays = _load(path)
    where = str(path)
    missing = [key for key in _REQUIRED if key not in arrays]
    if missing:
        raise DataError(f"{where}: missing array(s) {missing} (sGDML layout: R, z, E, F)")
    if "lattice" in arrays:
        raise DataError(f"{where}: periodic sGDML data ('lattice') is not supported")
    symbols = symbols_from_numbers(arrays["z"], where, "z")
    n_atoms = len(symbols)
    positions = float_array(arrays["R"], "R", (None, n_atoms, 3), where, finite=False)
    n_frames = len(positions)
    if n_frames == 0:
        raise DataError(f"{where}: no frames (R has shape {positions.shape})")
    energies = _energies(arrays["E"], n_frames, where)
    forces = None
    if "F" in arrays:
        forces = float_array(arrays["F"], "F", (n_frames, n_atoms, 3), where, finite=False)
    for name, values in (("R", positions), ("E", energies), ("F", forces)):
        bad = None if values is None else first_nonfinite(values)
        if bad is not None:
            raise DataError(f"{where}: frame {bad}: {name} is not finite")
    unit = kcal / mol
    for i in range(n_frames):
        yield molecule(
            symbols,
            positions[i],
            float(energies[i] * unit),
            None if forces is None else forces[i] * unit,
            source=f"{path.name}:frame {i}",
        )


def _load(path: Path) -> dict[str, Any]:
    """The arrays R, z, E, F of the archive that are present; ``lattice`` as a marker."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz archive ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, expected an .npz archive")
    with archive:
        try:
            return {key: archive[key] for key in (*_REQUIRED, "F", "lattice") if key in archive}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}: cannot read the arrays ({err})") from None


def _energies(values: Any, n_frames: int, where: str) -> np.ndarray:
    energies = np.asarray(values)
    if energies.shape == (n_frames, 1):
        energies = energies[:, 0]
    if energies.shape != (n_frames,):
        raise DataError(
            f"{where}: E has shape {energies.shape}, expected ({n_frames},) or ({n_frames}, 1)"
        )
    return float_array(energies, "E", (n_frames,), where, finite=False)
