"""Reader for the ANI-1 data set in the pyanitools HDF5 layout (``ani_gdb_s01.h5`` …).

Each molecule is a group (``gdb11_s01/gdb11_s01-0``) holding ``coordinates`` (n_conf, n_atoms, 3)
Å, ``energies`` (n_conf,) Hartree, ``species`` (n_atoms,) element symbols as bytes, ``smiles`` and
optionally ``coordinatesHE``/``energiesHE`` (extra high-energy conformations). The full set is
5.7 GB, so the reader streams one molecule at a time and reads only the conformations it yields.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jat.data.checks import (
    PathLike,
    checked_symbols,
    first_nonfinite,
    molecule,
    require_file,
    symbols_from_numbers,
)
from jat.data.structure import DataError, Structure

#: (coordinates, energies) dataset names of the regular and the high-energy conformations.
_REGULAR = ("coordinates", "energies")
_HIGH_ENERGY = ("coordinatesHE", "energiesHE")


def read_ani1(
    path: PathLike,
    fraction: float = 1.0,
    high_energy: bool = False,
    seed: int = 0,
    molecules: Iterable[str] | str | None = None,
) -> Iterator[Structure]:
    """Stream ANI-1 conformations as non-periodic Structures (Å, eV; no forces).

    The file is opened once, when iteration starts, and read one molecule at a time in file
    order; ``group`` is the molecule key and ``source`` is ``"file:key[i]"``.

    Args:
        path: a pyanitools ``.h5`` file.
        fraction: in (0, 1]; per molecule, ``max(1, round(fraction * n_conf))`` conformations
            (Python's round: half to even) are drawn without replacement by
            ``np.random.default_rng([seed, crc32(key)])``, so the draw depends only on the seed
            and the molecule, not on the file or the other molecules.
        high_energy: also yield the ``coordinatesHE`` conformations (same fraction, drawn after
            the regular ones from the same generator).
        seed: integer seed of the draw.
        molecules: only these molecule keys (``"gdb11_s01/gdb11_s01-0"``); yielded in file order.
            A key the file does not hold is a ValueError.

    Raises:
        FileNotFoundError: the file is missing (raised at the call).
        ValueError: ``fraction`` out of range (at the call); an unknown molecule key.
        DataError: not an HDF5 file, no molecules, missing datasets, wrong shapes, unknown
            elements, NaN/inf; the message names the file and the molecule (and conformation).
    """
    path = require_file(path)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    wanted = None if molecules is None else requested_molecules(molecules)
    return _read(path, float(fraction), bool(high_energy), int(seed), wanted)


def list_ani1_molecules(path: PathLike) -> list[tuple[str, str, int]]:
    """``(key, Hill formula, n_conf)`` for every molecule in the file, without reading coordinates.

    ``n_conf`` counts the regular conformations (not the high-energy ones).
    """
    from ase.formula import Formula

    path = require_file(path)
    listing = []
    with _open(path) as h5:
        for key in _molecule_keys(h5, path):
            group = h5[key]
            where = f"{path}: {key}"
            symbols = _species(group, where)
            coords = _dataset(group, _REGULAR[0], where)
            _check_shapes(coords, _dataset(group, _REGULAR[1], where), len(symbols), where)
            listing.append((key, Formula.from_list(list(symbols)).format("hill"), coords.shape[0]))
    return listing


def ani1_molecule_keys(path: PathLike) -> list[str]:
    """Keys of the molecule groups in file order, reading only the group names."""
    path = require_file(path)
    with _open(path) as h5:
        return _molecule_keys(h5, path)


def requested_molecules(molecules: Iterable[str] | str) -> list[str]:
    """Molecule keys without leading or trailing ``/`` and without repeats; a str is one key."""
    keys = [molecules] if isinstance(molecules, str) else molecules
    return list(dict.fromkeys(str(key).strip("/") for key in keys))


def sample_indices(n_conf: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted unique indices of ``max(1, round(fraction * n_conf))`` of ``n_conf`` conformations
    (all of them, drawing nothing, when that is ``n_conf``; none when ``n_conf`` is 0)."""
    if n_conf == 0:
        return np.zeros(0, dtype=np.int64)
    n_pick = max(1, round(fraction * n_conf))
    if n_pick >= n_conf:
        return np.arange(n_conf)
    return np.sort(rng.choice(n_conf, size=n_pick, replace=False))


def molecule_rng(seed: int, key: str) -> np.random.Generator:
    """The generator that draws the conformations of molecule ``key``."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _read(
    path: Path, fraction: float, high_energy: bool, seed: int, wanted: list[str] | None
) -> Iterator[Structure]:
    with _open(path) as h5:
        keys = _molecule_keys(h5, path)
        if wanted is not None:
            held = set(keys)
            missing = [key for key in wanted if key not in held]
            if missing:
                raise ValueError(f"{path}: no molecule group(s) {missing}")
            chosen = set(wanted)
            keys = [key for key in keys if key in chosen]
        for key in keys:
            yield from _molecule(h5[key], key, path, fraction, high_energy, seed)


def _open(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None


def _molecule_keys(h5: Any, path: Path) -> list[str]:
    keys = _groups_with_data(h5)
    if not keys:
        raise DataError(f"{path}: no molecule groups (expected e.g. gdb11_s01/gdb11_s01-0)")
    return keys


def _groups_with_data(group: Any) -> list[str]:
    """Names of the groups under ``group`` that hold ANI-1 datasets, depth first in file order."""
    import h5py

    keys = []
    for name in group:
        item = group[name]
        if not isinstance(item, h5py.Group):
            continue
        if "species" in item or _REGULAR[0] in item:
            keys.append(item.name.strip("/"))
        else:
            keys.extend(_groups_with_data(item))
    return keys


def _molecule(
    group: Any, key: str, path: Path, fraction: float, high_energy: bool, seed: int
) -> Iterator[Structure]:
    from ase.units import Hartree

    where = f"{path}: {key}"
    symbols = _species(group, where)
    rng = molecule_rng(seed, key)
    parts = [_REGULAR, _HIGH_ENERGY] if high_energy else [_REGULAR]
    for coords_name, energies_name in parts:
        if coords_name == _HIGH_ENERGY[0] and coords_name not in group:
            continue
        coords = _dataset(group, coords_name, where)
        energies = _dataset(group, energies_name, where)
        _check_shapes(coords, energies, len(symbols), where)
        picked = sample_indices(coords.shape[0], fraction, rng)
        if len(picked) == 0:
            continue
        positions, energy = _read_rows(coords, picked), _read_rows(energies, picked)
        entry = key if coords_name == _REGULAR[0] else f"{key}/{coords_name}"
        for name, values in (("coordinates", positions), ("energy", energy)):
            bad = first_nonfinite(values)
            if bad is not None:
                raise DataError(f"{path}: {entry}[{picked[bad]}]: {name} is not finite")
        for i, r, e in zip(picked, positions, energy * Hartree, strict=True):
            source = f"{path.name}:{entry}[{i}]"
            yield molecule(symbols, r.copy(), float(e), source=source, group=key)


def _read_rows(dataset: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of a dataset as float64; reads the whole dataset only when all rows are wanted."""
    if len(rows) == dataset.shape[0]:
        return np.asarray(dataset[()], dtype=np.float64)
    return np.asarray(dataset[rows], dtype=np.float64)


def _dataset(group: Any, name: str, where: str) -> Any:
    import h5py

    item = group.get(name)
    if not isinstance(item, h5py.Dataset):
        raise DataError(f"{where}: missing dataset {name!r}")
    if not np.issubdtype(item.dtype, np.number):
        raise DataError(f"{where}: {name} has non-numeric dtype {item.dtype}")
    return item


def _species(group: Any, where: str) -> tuple[str, ...]:
    import h5py

    item = group.get("species")
    if not isinstance(item, h5py.Dataset):
        raise DataError(f"{where}: missing dataset 'species'")
    values = item[()]
    if np.ndim(values) != 1 or len(values) == 0:
        raise DataError(f"{where}: species has shape {np.shape(values)}, expected (n_atoms,)")
    if np.issubdtype(np.asarray(values).dtype, np.integer):
        return symbols_from_numbers(values, where, "species")
    return checked_symbols(values, where)


def _check_shapes(coords: Any, energies: Any, n_atoms: int, where: str) -> None:
    n_conf = coords.shape[0] if coords.ndim else 0
    if coords.shape != (n_conf, n_atoms, 3):
        raise DataError(
            f"{where}: {coords.name.rsplit('/', 1)[-1]} has shape {coords.shape}, "
            f"expected (n_conf, {n_atoms}, 3) for {n_atoms} species"
        )
    if energies.shape != (n_conf,):
        raise DataError(
            f"{where}: {energies.name.rsplit('/', 1)[-1]} has shape {energies.shape}, "
            f"expected ({n_conf},)"
        )
