"""Reader for QM9 (Ramakrishnan et al., Sci. Data 1, 140022 (2014)): 133 885 small organic
molecules (H, C, N, O, F) relaxed at B3LYP/6-31G(2df,p), with 15 scalar properties each.

Sources:

- the original distribution: ``dsgdb9nsd_NNNNNN.xyz`` files, one file, a directory of them or
  the ``dsgdb9nsd.xyz.tar.bz2`` archive. Line 1 holds the atom count n, line 2 ``gdb <index>``
  and the 15 properties (A B C μ α HOMO LUMO gap R² ZPVE U0 U H G Cv), then n lines
  ``El x y z q_Mulliken``, the harmonic frequencies, the SMILES and the InChI lines. Numbers
  may use Fortran's ``*^`` exponent (``1.2345*^-6``).
- the CSV files of the ``qm9pack`` package (``qm9_part1.csv`` … ``qm9_part3.csv``, the 130 831
  molecules that pass QM9's geometry consistency check), e.g. offline: ``pip install
  'jat[qm9]'``, then the path ``"qm9pack"`` (:func:`qm9pack_dir`) names their directory.

Every molecule becomes a non-periodic :class:`~jat.data.Structure` with ``energy`` = U0 in eV (no
forces), ``group`` = the molecule index (``"1"`` … ``"133885"``), ``source`` =
``"file:gdb <index>"`` and ``properties`` holding :data:`PROPERTIES` in jat units (eV, Å, e)
plus ``"mulliken_charges"`` (N,) in e. Units are converted here, with ``ase.units``: Hartree →
eV, Debye → e·Å, bohr³ → Å³, bohr² → Å²; rotational constants stay in GHz and Cv in
cal/(mol K).

``exclude`` leaves out molecules by index, typically the 3 054 listed in the distribution's
``uncharacterized.txt`` (:func:`read_exclusion_list`), which fail its geometry check.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import math
import re
import tarfile
import types
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jat.data.checks import PathLike, checked_symbols, molecule
from jat.data.structure import DataError, Structure

#: The 15 scalar properties in file order: (key, unit in the file, unit in ``properties``).
PROPERTIES: tuple[tuple[str, str, str], ...] = (
    ("A", "GHz", "GHz"),
    ("B", "GHz", "GHz"),
    ("C", "GHz", "GHz"),
    ("mu", "Debye", "e·Å"),
    ("alpha", "bohr³", "Å³"),
    ("homo", "Hartree", "eV"),
    ("lumo", "Hartree", "eV"),
    ("gap", "Hartree", "eV"),
    ("r2", "bohr²", "Å²"),
    ("zpve", "Hartree", "eV"),
    ("U0", "Hartree", "eV"),
    ("U", "Hartree", "eV"),
    ("H", "Hartree", "eV"),
    ("G", "Hartree", "eV"),
    ("Cv", "cal/(mol K)", "cal/(mol K)"),
)
PROPERTY_KEYS = tuple(key for key, _, _ in PROPERTIES)
#: The qm9pack CSV column of each property.
CSV_COLUMNS = dict(
    zip(
        PROPERTY_KEYS,
        (
            "RotA_GHz",
            "RotB_GHz",
            "RotC_GHz",
            "Dipole_debye",
            "Polarizability_bohr3",
            "HOMO_au",
            "LUMO_au",
            "HOMO_LUMO_gap_au",
            "R2_bohr2",
            "ZPVE_au",
            "InternalEnergy_0K_au",
            "InternalEnergy_298K_au",
            "Enthalphy_298K_au",
            "GibbsFreeEnergy_298K_au",
            "Heatcapacity_Cv_cal_mol_K",
        ),
        strict=True,
    )
)
_CSV_STRUCTURE = ("Index", "N_atoms", "Elements", "XYZ_Ang", "Mulliken_pop")
_XYZ_NAME = re.compile(r"dsgdb9nsd_\d+\.xyz$")
_CSV_NAME = re.compile(r"qm9_part\d+\.csv$")
_ARCHIVE_SUFFIXES = (".tar.bz2", ".tbz2", ".tar.gz", ".tgz", ".tar.xz", ".tar")
_PROSE = re.compile(r"[a-z]{2,}$")


@functools.cache
def unit_factors() -> Mapping[str, float]:
    """Multiplier from the file's unit to jat's for every key of :data:`PROPERTIES` (read-only)."""
    from ase.units import Bohr, Debye, Hartree

    by_unit = {"Hartree": Hartree, "Debye": Debye, "bohr³": Bohr**3, "bohr²": Bohr**2}
    return types.MappingProxyType({key: by_unit.get(unit, 1.0) for key, unit, _ in PROPERTIES})


def qm9pack_dir() -> Path:
    """The directory of the ``qm9pack`` package's QM9 CSV files (without importing it).

    Raises:
        FileNotFoundError: qm9pack is not installed (``pip install 'jat[qm9]'``).
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the qm9pack package is not installed; pip install 'jat[qm9]' (or qm9pack)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not any(_CSV_NAME.match(p.name) for p in path.glob("qm9_part*.csv")):
        raise FileNotFoundError(f"qm9pack is installed but {path} holds no qm9_part*.csv files")
    return path


def is_qm9_name(path: PathLike) -> bool:
    """Whether a file or directory name says QM9: ``dsgdb9nsd_*.xyz``, ``dsgdb9nsd*.tar.*``,
    ``qm9_part*.csv``, or a directory holding such files."""
    path = Path(path)
    if path.is_dir():
        return bool(_members(path))
    name = path.name.lower()
    if _XYZ_NAME.match(name) or _CSV_NAME.match(name):
        return True
    return name.startswith("dsgdb9nsd") and name.endswith(_ARCHIVE_SUFFIXES)


def looks_like_qm9_xyz(head: bytes) -> bool:
    """Whether the first bytes of a file are a QM9 xyz molecule (count, then ``gdb <index>``)."""
    lines = head.split(b"\n", 2)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        return False
    tokens = lines[1].split()
    return len(tokens) >= 2 and tokens[0] == b"gdb" and tokens[1].isdigit()


# ---------------------------------------------------------------------------------------------
# Exclusion list


def read_exclusion_list(path: PathLike) -> frozenset[int]:
    """Molecule indices listed in ``uncharacterized.txt`` (or any file of that layout).

    The layout: header lines, then one line per molecule whose first column is its index
    (further columns, e.g. SMILES, are ignored), then footer lines. Lines before the first and
    after the last entry whose first token is not an integer (or which read as prose, such as
    ``"3054 molecules ..."``) are the header and footer. A plain list of indices also works.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: no entries, a line between entries without an index, an index < 1, or an
            index listed twice (the message names the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exclusion list not found: {path}")
    entries: list[tuple[int, int]] = []
    stray: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        index = _index_column(tokens)
        if index is None:
            if entries:
                stray.append((number, line.strip()))
            continue
        if stray:
            k, text = stray[0]
            raise DataError(f"{path}: line {k}: expected a molecule index first, got {text!r}")
        entries.append((number, index))
    if not entries:
        raise DataError(f"{path}: no molecule indices (expected lines starting with an index)")
    seen: dict[int, int] = {}
    for number, index in entries:
        if index < 1:
            raise DataError(f"{path}: line {number}: molecule index {index} is not >= 1")
        if index in seen:
            raise DataError(
                f"{path}: line {number}: molecule {index} is listed twice (also on line "
                f"{seen[index]})"
            )
        seen[index] = number
    return frozenset(seen)


def _index_column(tokens: list[str]) -> int | None:
    """The integer in the first column of an entry line, or None for header/footer text."""
    if not re.fullmatch(r"[+-]?\d+", tokens[0]):
        return None
    if len(tokens) > 1 and _PROSE.match(tokens[1]):
        return None
    return int(tokens[0])


def excluded_indices(exclude: PathLike | Iterable[int] | None) -> frozenset[int]:
    """The ``exclude`` option as a set of indices: None, a file (:func:`read_exclusion_list`) or
    integers."""
    if exclude is None:
        return frozenset()
    if isinstance(exclude, (str, bytes)) or hasattr(exclude, "__fspath__"):
        return read_exclusion_list(exclude)
    values = list(exclude)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError("exclude must be a file or a list of integer molecule indices")
    return frozenset(int(v) for v in values)


# ---------------------------------------------------------------------------------------------
# Reader


def read_qm9(
    path: PathLike, exclude: PathLike | Iterable[int] | None = None
) -> Iterator[Structure]:
    """Stream QM9 molecules as non-periodic Structures (Å; energy U0 in eV; no forces).

    Args:
        path: a ``dsgdb9nsd_*.xyz`` file, a directory of them (read in name order), a tar
            archive of them (``.tar.bz2`` …, archive order), a qm9pack ``qm9_part*.csv`` file, a
            directory of those, or ``"qm9pack"`` for the installed package's files.
        exclude: molecule indices to leave out: a file in the layout of ``uncharacterized.txt``
            or a list of integers (checked at the call).

    Raises:
        FileNotFoundError: the path (or the exclusion list) is missing, or ``"qm9pack"`` is
            not installed (at the call).
        DataError: malformed input, naming the file, the molecule or line, and the problem.
    """
    if isinstance(path, str) and path == "qm9pack":
        path = qm9pack_dir()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    skip = excluded_indices(exclude)
    return (s for s in _structures(path) if int(s.group) not in skip)


def _structures(path: Path) -> Iterator[Structure]:
    if path.is_dir():
        members = _members(path)
        if not members:
            raise DataError(f"{path}: no dsgdb9nsd_*.xyz or qm9_part*.csv files in the directory")
        for member in members:
            yield from _structures(member)
    elif path.name.lower().endswith(".csv"):
        yield from _read_csv(path)
    elif path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        yield from _read_archive(path)
    else:
        yield parse_xyz(path.read_bytes().decode("utf-8", "replace"), str(path), path.name)


def _members(directory: Path) -> list[Path]:
    """The QM9 xyz files of a directory, else its qm9pack CSV files, in name order."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    xyz = [p for p in files if _XYZ_NAME.match(p.name)]
    return xyz or [p for p in files if _CSV_NAME.match(p.name)]


def _read_archive(path: Path) -> Iterator[Structure]:
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable tar archive ({err})") from None
    with archive:
        found = False
        members = iter(archive)
        while True:
            try:
                member = next(members)
                if not (member.isfile() and member.name.endswith(".xyz")):
                    continue
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
            except StopIteration:
                break
            except (tarfile.TarError, OSError, EOFError) as err:
                raise DataError(f"{path}: the archive is damaged or truncated ({err})") from None
            found = True
            text = data.decode("utf-8", "replace")
            yield parse_xyz(text, f"{path}: {member.name}", f"{path.name}")
        if not found:
            raise DataError(f"{path}: no .xyz files in the archive")


# ---------------------------------------------------------------------------------------------
# One xyz molecule


def qm9_float(token: str) -> float:
    """A QM9 number: Python float syntax or Fortran's ``1.2345*^-6``; ValueError otherwise."""
    return float(token.replace("*^", "e"))


def parse_xyz(text: str, where: str, name: str) -> Structure:
    """One molecule of the QM9 xyz format (see the module docstring) as a Structure.

    ``where`` names the input in errors (``"path"`` or ``"archive: member"``); ``name`` is the
    file part of ``source`` (``"name:gdb <index>"``).
    """
    lines = text.splitlines()
    head = lines[0].strip() if lines else ""
    if not head.isdigit() or int(head) < 1:
        raise DataError(f"{where}: line 1: expected the number of atoms, got {head!r}")
    n = int(head)
    tokens = lines[1].split() if len(lines) > 1 else []
    if len(tokens) < 2 or tokens[0] != "gdb" or not tokens[1].isdigit():
        raise DataError(f"{where}: line 2: expected 'gdb <index>' and 15 properties")
    index = int(tokens[1])
    entry = f"{where}: gdb {index}"
    values = tokens[2:]
    if len(values) != len(PROPERTIES):
        raise DataError(
            f"{entry}: line 2: expected {len(PROPERTIES)} properties "
            f"({' '.join(PROPERTY_KEYS)}), got {len(values)}"
        )
    pairs = zip(PROPERTY_KEYS, values, strict=True)
    raw = {key: _number(v, entry, f"property {key}") for key, v in pairs}
    if len(lines) < n + 5:
        raise DataError(
            f"{entry}: truncated: {len(lines)} lines, expected {n + 5} for {n} atoms (count, "
            "properties, atoms, frequencies, SMILES, InChI)"
        )
    symbols, rows = [], []
    for k, line in enumerate(lines[2 : 2 + n]):
        parts = line.split()
        if len(parts) != 5:
            raise DataError(
                f"{entry}: line {k + 3}: expected 'element x y z charge', got {line.strip()!r}"
            )
        symbols.append(parts[0])
        rows.append([_number(v, entry, f"atom {k} (line {k + 3})") for v in parts[1:]])
    table = np.array(rows, dtype=np.float64)
    return _structure(
        checked_symbols(symbols, entry), table[:, :3], table[:, 3], raw, index, entry, name
    )


def _number(token: str, entry: str, what: str) -> float:
    try:
        value = qm9_float(token)
    except ValueError:
        raise DataError(f"{entry}: {what}: not a number: {token!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{entry}: {what}: not finite: {token!r}")
    return value


def _structure(
    symbols: tuple[str, ...],
    positions: np.ndarray,
    charges: np.ndarray,
    raw: Mapping[str, float],
    index: int,
    entry: str,
    name: str,
) -> Structure:
    """The Structure of one molecule from properties in the file's units."""
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(charges))):
        raise DataError(f"{entry}: positions or charges are not finite")
    factors = unit_factors()
    properties: dict[str, Any] = {key: raw[key] * factors[key] for key in PROPERTY_KEYS}
    properties["mulliken_charges"] = charges
    return molecule(
        symbols,
        positions,
        float(properties["U0"]),
        source=f"{name}:gdb {index}",
        group=str(index),
        properties=properties,
    )


# ---------------------------------------------------------------------------------------------
# qm9pack CSV


def _read_csv(path: Path) -> Iterator[Structure]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None:
            raise DataError(f"{path}: empty file")
        columns = {name.strip(): k for k, name in enumerate(header)}
        wanted = (*_CSV_STRUCTURE, *CSV_COLUMNS.values())
        missing = [name for name in wanted if name not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing} (expected the qm9pack layout)")
        at = {name: columns[name] for name in wanted}
        width = max(at.values()) + 1
        for number, row in enumerate(rows, 2):
            if len(row) < width:
                raise DataError(
                    f"{path}: line {number}: {len(row)} columns, expected {len(header)}"
                )
            yield _csv_row(row, at, path, number)


def _csv_row(row: list[str], at: Mapping[str, int], path: Path, number: int) -> Structure:
    where = f"{path}: line {number}"
    text = row[at["Index"]].strip()
    if not text.isdigit():
        raise DataError(f"{where}: Index is not a molecule index: {text!r}")
    index = int(text)
    entry = f"{where} (gdb {index})"
    count = row[at["N_atoms"]].strip()
    if not count.isdigit() or int(count) < 1:
        raise DataError(f"{entry}: N_atoms is not a positive integer: {count!r}")
    n = int(count)
    symbols = [s.strip().strip("'\"") for s in row[at["Elements"]].strip(" []").split(",")]
    if len(symbols) != n:
        raise DataError(f"{entry}: Elements lists {len(symbols)} atoms, N_atoms is {n}")
    positions = _numbers(row[at["XYZ_Ang"]], n * 3, entry, "XYZ_Ang").reshape(n, 3)
    charges = _numbers(row[at["Mulliken_pop"]], n, entry, "Mulliken_pop")
    raw = {key: _number(row[at[col]], entry, col) for key, col in CSV_COLUMNS.items()}
    return _structure(
        checked_symbols(symbols, entry), positions, charges, raw, index, entry, path.name
    )


def _numbers(text: str, count: int, entry: str, column: str) -> np.ndarray:
    """A bracketed list of numbers (nested or not) with ``count`` entries."""
    flat = text.replace("[", " ").replace("]", " ").replace(",", " ").split()
    if len(flat) != count:
        raise DataError(f"{entry}: {column} has {len(flat)} numbers, expected {count}")
    try:
        return np.array(flat, dtype=np.float64)
    except ValueError:
        raise DataError(f"{entry}: {column} holds something that is not a number") from None
