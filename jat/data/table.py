"""``StructureTable``: many structures held column by column, for data sets of millions.

A list of :class:`~jat.data.structure.Structure` costs about 1.3 kB per small molecule, most of
it Python objects (the dataclass, its symbol tuple, two arrays, two strings). The table keeps
the same data in a few flat arrays (about 0.4 kB per 5-atom conformation) and gives back a
``Structure`` on indexing, so code that takes a sequence of structures takes a table unchanged.
:func:`collect` fills one from any iterable, block by block, without holding the whole
iterable's ``Structure`` objects at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

from jat.data.structure import Structure

BLOCK = 4096  # structures converted to columns at a time by :func:`collect`


@dataclasses.dataclass(frozen=True, eq=False)
class StructureTable(Sequence[Structure]):
    """Structures as columns (units as in ``Structure``); of the C structures stored, the table
    holds those at ``rows`` (all when None), so :meth:`take` shares the columns, copying nothing.

    Attributes:
        elements: the element symbols the ``codes`` index.
        codes: (A,) uint8, each stored atom's element as an index into ``elements``.
        offsets: (C + 1,) int64, stored structure c's atoms are ``offsets[c]:offsets[c + 1]``.
        positions: (A, 3) float64 Å.
        cell: (C, 3, 3) float64 Å; pbc: (C, 3) bool.
        energy: (C,) float64 eV, NaN where ``has_energy`` is False.
        forces: (A, 3) float64 eV/Å or None when no structure has forces; ``has_forces`` (C,).
        stress: (C, 3, 3) float64 eV/Å³ or None when none has a stress; ``has_stress`` (C,).
        source_bytes, source_offsets: every ``Structure.source``, UTF-8, back to back.
        groups: the distinct ``Structure.group`` values; group_codes (C,) int32 index them.
        properties: per stored structure its ``properties`` mapping (None when empty), or None
            when all are empty.
        rows: (M,) int64 the stored structures this table holds, in its order, or None (all).
    """

    elements: tuple[str, ...]
    codes: np.ndarray
    offsets: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: np.ndarray
    has_energy: np.ndarray
    forces: np.ndarray | None
    has_forces: np.ndarray
    stress: np.ndarray | None
    has_stress: np.ndarray
    source_bytes: bytes
    source_offsets: np.ndarray
    groups: tuple[str, ...]
    group_codes: np.ndarray
    properties: tuple[Mapping[str, Any] | None, ...] | None = None
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.rows is None else len(self.rows)

    def _stored(self) -> np.ndarray:
        return np.arange(len(self.offsets) - 1) if self.rows is None else self.rows

    @property
    def n_atoms(self) -> np.ndarray:
        """(M,) atoms per structure."""
        counts = np.diff(self.offsets)
        return counts if self.rows is None else counts[self.rows]

    def elements_present(self) -> set[str]:
        """The element symbols of this table's structures."""
        if self.rows is None:
            codes = self.codes
        else:
            held = np.zeros(len(self.offsets) - 1, bool)
            held[self.rows] = True
            codes = self.codes[np.repeat(held, np.diff(self.offsets))]
        return {self.elements[c] for c in np.unique(codes).tolist()}

    @property
    def sources(self) -> list[str]:
        """Every structure's ``source``, in order."""
        return list(self.iter_sources())

    def iter_sources(self, chunk: int = 65536) -> Iterator[str]:
        """Every structure's ``source``, in order, one at a time (a million sources as one
        list of ``str`` cost about 0.1 GB)."""
        b, o, stored = self.source_bytes, self.source_offsets, self._stored()
        for start in range(0, len(stored), chunk):
            for c in stored[start : start + chunk].tolist():
                yield b[o[c] : o[c + 1]].decode()

    @overload
    def __getitem__(self, key: int) -> Structure: ...

    @overload
    def __getitem__(self, key: slice) -> StructureTable: ...

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"a StructureTable takes an integer or a slice, got {key!r}")
        m = len(self)
        k = int(key) + m if key < 0 else int(key)
        if not 0 <= k < m:
            raise IndexError(f"structure {key} of a table of {m}")
        return self._structure(k if self.rows is None else int(self.rows[k]))

    def __iter__(self) -> Iterator[Structure]:
        for c in self._stored().tolist():
            yield self._structure(c)

    def _structure(self, c: int) -> Structure:
        """Stored structure ``c`` as a ``Structure`` (its arrays are copies)."""
        a, b = int(self.offsets[c]), int(self.offsets[c + 1])
        o = self.source_offsets
        return Structure(
            symbols=tuple(self.elements[x] for x in self.codes[a:b].tolist()),
            positions=self.positions[a:b].copy(),
            cell=self.cell[c].copy(),
            pbc=tuple(bool(p) for p in self.pbc[c]),
            energy=float(self.energy[c]) if self.has_energy[c] else None,
            forces=self.forces[a:b].copy() if self.has_forces[c] else None,
            stress=self.stress[c].copy() if self.has_stress[c] else None,
            source=self.source_bytes[o[c] : o[c + 1]].decode(),
            group=self.groups[self.group_codes[c]],
            properties=dict(self.properties[c] or {}) if self.properties is not None else {},
        )

    def take(self, indices: Sequence[int] | np.ndarray) -> StructureTable:
        """The structures at ``indices`` (in that order), sharing this table's columns."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        m = len(self)
        if idx.size and (idx.min() < -m or idx.max() >= m):
            raise IndexError(f"indices outside a table of {m} structures")
        idx = np.where(idx < 0, idx + m, idx)
        return dataclasses.replace(self, rows=self._stored()[idx])


def collect(structures: Iterable[Structure]) -> StructureTable:
    """A :class:`StructureTable` of ``structures`` (any iterable, read once, in order), built
    :data:`BLOCK` structures at a time."""
    elements: dict[str, int] = {}
    groups: dict[str, int] = {}
    blocks: list[dict[str, Any]] = []
    pending: list[Structure] = []
    for s in structures:
        pending.append(s)
        if len(pending) == BLOCK:
            blocks.append(_columns(pending, elements, groups))
            pending = []
    if pending or not blocks:
        blocks.append(_columns(pending, elements, groups))
    return _join(blocks, tuple(elements), tuple(groups))


def _columns(structures: list[Structure], elements: dict, groups: dict) -> dict[str, Any]:
    """One block's columns; new element symbols and groups are added to the lookups."""
    for s in structures:
        for x in s.symbols:
            if x not in elements:
                if len(elements) == 256:
                    raise ValueError(f"{s.source}: more than 256 distinct element symbols")
                elements[x] = len(elements)
        groups.setdefault(s.group, len(groups))
    m = len(structures)
    counts = np.array([s.n_atoms for s in structures], np.int64)
    has_forces = np.array([s.forces is not None for s in structures], bool)
    has_stress = np.array([s.stress is not None for s in structures], bool)
    sources = [s.source.encode() for s in structures]

    def stack(arrays, shape):
        return np.concatenate(arrays).reshape(shape) if arrays else np.zeros(shape)

    return {
        "codes": np.array([elements[x] for s in structures for x in s.symbols], np.uint8),
        "counts": counts,
        "positions": stack([np.asarray(s.positions, np.float64) for s in structures],
                           (-1, 3) if m else (0, 3)),
        "cell": np.array([np.asarray(s.cell, np.float64) for s in structures]).reshape(m, 3, 3),
        "pbc": np.array([tuple(s.pbc) for s in structures], bool).reshape(m, 3),
        "energy": np.array(
            [np.nan if s.energy is None else float(s.energy) for s in structures], np.float64
        ),
        "has_energy": np.array([s.energy is not None for s in structures], bool),
        "forces": stack(
            [
                np.asarray(s.forces, np.float64) if s.forces is not None
                else np.zeros((s.n_atoms, 3))
                for s in structures
            ],
            (-1, 3) if m else (0, 3),
        ) if has_forces.any() else None,
        "has_forces": has_forces,
        "stress": np.array(
            [np.zeros((3, 3)) if s.stress is None else np.asarray(s.stress, np.float64)
             for s in structures]
        ).reshape(m, 3, 3) if has_stress.any() else None,
        "has_stress": has_stress,
        "sources": b"".join(sources),
        "source_counts": np.array([len(b) for b in sources], np.int64),
        "group_codes": np.array([groups[s.group] for s in structures], np.int32),
        "properties": [s.properties or None for s in structures],  # no empty dicts kept
    }


def _join(blocks: list[dict[str, Any]], elements, groups) -> StructureTable:
    def cat(name: str) -> np.ndarray:
        return np.concatenate([b.pop(name) for b in blocks])

    counts = cat("counts")
    n_atoms = [len(b["codes"]) for b in blocks]
    if any(b["forces"] is not None for b in blocks):
        forces = np.concatenate([
            b.pop("forces") if b["forces"] is not None else np.zeros((n, 3))
            for b, n in zip(blocks, n_atoms, strict=True)
        ])
    else:
        forces = None
    if any(b["stress"] is not None for b in blocks):
        stress = np.concatenate([
            b.pop("stress") if b["stress"] is not None else np.zeros((len(b["energy"]), 3, 3))
            for b in blocks
        ])
    else:
        stress = None
    properties = [p for b in blocks for p in b.pop("properties")]
    return StructureTable(
        elements=elements,
        codes=cat("codes"),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        positions=cat("positions"),
        cell=cat("cell"),
        pbc=cat("pbc"),
        energy=cat("energy"),
        has_energy=cat("has_energy"),
        forces=forces,
        has_forces=cat("has_forces"),
        stress=stress,
        has_stress=cat("has_stress"),
        source_bytes=b"".join(b.pop("sources") for b in blocks),
        source_offsets=np.concatenate([[0], np.cumsum(cat("source_counts"))]).astype(np.int64),
        groups=groups,
        group_codes=cat("group_codes"),
        properties=tuple(properties) if any(properties) else None,
    )


__all__ = ["StructureTable", "collect"]
