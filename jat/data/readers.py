"""``read_structures``: one entry point for every reference-data format, and the checks shared by
the readers.

Formats: ``ani1`` (pyanitools HDF5, :func:`jat.data.ani1.read_ani1`), ``neuralil`` (JSON lines,
:func:`jat.data.neuralil.read_neuralil`), ``md17`` (sGDML ``.npz``,
:func:`jat.data.md17.read_md17`), ``qm9`` (QM9 xyz files, their directory or archive, or qm9pack
CSV files, :func:`jat.data.qm9.read_qm9`) and ``ase`` (anything ``ase.io`` reads,
:func:`jat.data.ase_io.read_ase`). Readers are imported when first used, so ``import jat.data``
stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jat.data.checks import PathLike
from jat.data.structure import Structure

#: The data set shipped inside the package; ``read_structures("builtin")`` reads it.
BUILTIN = Path(__file__).resolve().parent / "builtin" / "ean_xtb.extxyz"

FORMATS: dict[str, tuple[str, str]] = {
    "ani1": ("jat.data.ani1", "read_ani1"),
    "neuralil": ("jat.data.neuralil", "read_neuralil"),
    "md17": ("jat.data.md17", "read_md17"),
    "qm9": ("jat.data.qm9", "read_qm9"),
    "ase": ("jat.data.ase_io", "read_ase"),
}
_SUFFIX_FORMATS = {".h5": "ani1", ".hdf5": "ani1", ".jsonl": "neuralil", ".npz": "md17"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_SNIFF_BYTES = 65536


# ---------------------------------------------------------------------------------------------
# Dispatcher


def read_structures(
    paths: PathLike | Sequence[PathLike], format: str = "auto", **options: Any
) -> Iterator[Structure]:
    """Read labelled structures (Å, eV, eV/Å, eV/Å³) from one or several files, in order.

    Args:
        paths: a path, the string ``"builtin"`` (:data:`BUILTIN`), the string ``"qm9pack"``
            (the installed qm9pack package's QM9 CSV files), or a list of them. Directories are
            read only by the qm9 reader.
        format: ``"auto"`` (by name, extension, then by content: QM9 names
            (``dsgdb9nsd_*.xyz``, ``dsgdb9nsd*.tar.bz2``, ``qm9_part*.csv``, a directory of
            them) and xyz files whose second line is ``gdb <index>`` → qm9, ``.h5``/``.hdf5`` →
            ani1, ``.jsonl`` → neuralil, ``.npz`` → md17, anything else → ase), or one of
            ``"ani1"``, ``"neuralil"``, ``"md17"``, ``"qm9"``, ``"ase"`` for every file.
        **options: passed to the reader of each file (``fraction``, ``high_energy``, ``seed``,
            ``molecules`` for ani1; ``composition``, ``index`` for neuralil; ``index`` for ase;
            ``exclude`` for qm9). With several ANI-1 files, each file gets the ``molecules`` it
            holds.

    Raises:
        FileNotFoundError: a file (or the built-in data set) is missing.
        ValueError: an unknown format, or an option the reader of some file does not accept
            (raised here, before anything is read).
        DataError: malformed data, while iterating.
    """
    files = [resolve_path(p) for p in _as_list(paths)]
    if not files:
        raise ValueError("read_structures: no paths given")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {sorted(FORMATS)}")
    plan = [(path, detect_format(path) if format == "auto" else format) for path in files]
    for path, fmt in plan:
        if path.is_dir() and fmt != "qm9":
            raise ValueError(f"{path} is a directory; only the qm9 format reads directories")
        _check_options(reader_for(fmt), fmt, path, options)
    per_file = _per_file_options(plan, options)
    iterators = [reader_for(fmt)(path, **per_file[path]) for path, fmt in plan if path in per_file]
    return itertools.chain.from_iterable(iterators)


def resolve_path(path: PathLike) -> Path:
    """``path`` as a ``Path`` of an existing file or directory; the string ``"builtin"`` names
    :data:`BUILTIN` and ``"qm9pack"`` the qm9pack package's data directory."""
    if isinstance(path, str) and path == "builtin":
        if not BUILTIN.is_file():
            raise FileNotFoundError(
                f"the built-in data set is missing: {BUILTIN} (reinstall jat or pass a data file)"
            )
        return BUILTIN
    if isinstance(path, str) and path == "qm9pack":
        from jat.data.qm9 import qm9pack_dir

        return qm9pack_dir()
    path = Path(path)
    if not (path.is_file() or path.is_dir()):
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def detect_format(path: PathLike) -> str:
    """The reader format for ``path``: by name or extension, else by the first bytes, else
    ``"ase"``. A directory is ``"qm9"`` when it holds QM9 files (ValueError otherwise)."""
    from jat.data.qm9 import is_qm9_name, looks_like_qm9_xyz

    path = Path(path)
    if path.is_dir():
        if is_qm9_name(path):
            return "qm9"
        raise ValueError(
            f"{path} is a directory without QM9 files (dsgdb9nsd_*.xyz or qm9_part*.csv); "
            "pass data files"
        )
    if is_qm9_name(path):
        return "qm9"
    by_suffix = _SUFFIX_FORMATS.get(path.suffix.lower())
    if by_suffix is not None:
        return by_suffix
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if path.suffix.lower() == ".xyz" and looks_like_qm9_xyz(head):
        return "qm9"
    if head.startswith(_HDF5_MAGIC):
        return "ani1"
    if head.startswith(_ZIP_MAGIC) and _is_npz(path):
        return "md17"
    if head.lstrip().startswith(b"{") and (b'"Positions"' in head or b'"Cell-Size"' in head):
        return "neuralil"
    return "ase"


def reader_for(format: str) -> Callable[..., Iterator[Structure]]:
    """The reader function for a format name (imports its module on first use)."""
    module, name = FORMATS[format]
    return getattr(importlib.import_module(module), name)


def _as_list(paths: PathLike | Sequence[PathLike]) -> list[PathLike]:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def _is_npz(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def _check_options(reader: Callable, fmt: str, path: Path, options: dict[str, Any]) -> None:
    accepted = list(inspect.signature(reader).parameters)[1:]
    for name in options:
        if name not in accepted:
            raise ValueError(
                f"option {name!r} is not accepted by the {fmt} reader (file {path}); "
                f"it accepts {accepted}"
            )


def _per_file_options(
    plan: list[tuple[Path, str]], options: dict[str, Any]
) -> dict[Path, dict[str, Any]]:
    """Options for each file; several ANI-1 files share out ``molecules`` by the keys they hold."""
    per_file = {path: dict(options) for path, _ in plan}
    molecules = options.get("molecules")
    if molecules is None or len(plan) < 2:
        return per_file
    from jat.data.ani1 import ani1_molecule_keys, requested_molecules

    wanted = requested_molecules(molecules)
    found: set[str] = set()
    for path, _ in plan:
        held = set(ani1_molecule_keys(path)).intersection(wanted)
        found |= held
        if held:
            per_file[path]["molecules"] = [key for key in wanted if key in held]
        else:
            del per_file[path]
    missing = [key for key in wanted if key not in found]
    if missing:
        names = ", ".join(str(path) for path, _ in plan)
        raise ValueError(f"molecule group(s) {missing} are in none of the files {names}")
    return per_file
