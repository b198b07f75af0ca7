"""Reader for anything ``ase.io`` reads (extended XYZ, ASE databases, trajectories, …).

Labels come from the attached calculator (``energy``, ``forces``, ``stress``) and, for those it
lacks, from ``atoms.info["energy"]``, ``atoms.arrays["forces"]`` and ``atoms.info["stress"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jat.data.checks import PathLike, float_array, require_file, symbols_from_numbers
from jat.data.structure import DataError, Structure


def read_ase(path: PathLike, index: str | int | slice = ":") -> Iterator[Structure]:
    """Stream the frames ``ase.io.iread(path, index)`` yields as Structures (Å, eV, eV/Å,
    stress as a symmetric 3×3 eV/Å³ from Voigt 6 or 3×3; ``source`` is ``"file:frame i"``).

    Raises:
        FileNotFoundError: the file is missing (at the call).
        DataError: ASE cannot read a frame (the message names the file, the frame and ASE's
            error), a file with no frames, unknown elements, wrong label shapes, NaN/inf.
    """
    path = require_file(path)
    return _read(path, index)


def frame_label(index: str | int | slice, i: int) -> str:
    """``"frame k"`` for the i-th frame of the selection when its position in the file is known
    from ``index`` alone, else ``"item i of selection <index>"``."""
    from ase.io.formats import string2index

    selection = string2index(index) if isinstance(index, str) else index
    if isinstance(selection, int) and selection >= 0:
        return f"frame {selection}"
    if isinstance(selection, slice):
        start, step = selection.start or 0, selection.step or 1
        if start >= 0 and step > 0:
            return f"frame {start + i * step}"
    return f"item {i} of selection {index!r}"


def _read(path: Path, index: str | int | slice) -> Iterator[Structure]:
    import ase.io

    frames = ase.io.iread(path, index=index)
    i = 0
    while True:
        label = frame_label(index, i)
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as err:  # ASE's parsers raise many types for malformed input
            problem = f"ASE cannot read it ({type(err).__name__}: {err})"
            raise DataError(f"{path}: {label}: {problem}") from err
        yield atoms_structure(atoms, f"{path}: {label}", f"{path.name}:{label}")
        i += 1
    if i == 0 and index == ":":
        raise DataError(f"{path}: no structures")


def atoms_structure(atoms: Any, where: str, source: str = "") -> Structure:
    """An ASE ``Atoms`` and its labels as a checked Structure; ``where`` prefixes error messages."""
    symbols = symbols_from_numbers(atoms.numbers, where)
    n_atoms = len(symbols)
    energy = _label(atoms, "energy", atoms.info)
    forces = _label(atoms, "forces", atoms.arrays)
    stress = _label(atoms, "stress", atoms.info)
    return Structure(
        symbols=symbols,
        positions=float_array(atoms.positions, "positions", (n_atoms, 3), where),
        cell=float_array(atoms.cell.array, "cell", (3, 3), where),
        pbc=tuple(bool(p) for p in atoms.pbc),
        energy=None if energy is None else float(float_array(energy, "energy", (), where)),
        forces=None if forces is None else float_array(forces, "forces", (n_atoms, 3), where),
        stress=None if stress is None else _stress(stress, where),
        source=source,
    )


def _label(atoms: Any, name: str, fallback: dict[str, Any]) -> Any:
    value = None
    if atoms.calc is not None:
        value = atoms.calc.get_property(name, atoms, allow_calculation=False)
    return fallback.get(name) if value is None else value


def _stress(value: Any, where: str) -> np.ndarray:
    from ase.stress import voigt_6_to_full_3x3_stress

    array = np.asarray(value)
    if array.shape == (6,):
        return voigt_6_to_full_3x3_stress(float_array(array, "stress", (6,), where))
    if array.shape == (9,):
        array = array.reshape(3, 3)
    return float_array(array, "stress", (3, 3), where)
