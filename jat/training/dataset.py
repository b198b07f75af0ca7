"""Training data as padded arrays in a few static shapes ("buckets"), with neighbour lists.

Structures are grouped into at most ``max_buckets`` atom-count buckets chosen to minimise the
number of padded atom slots. Every structure's neighbour list is built once, with
:mod:`jat.graph` (capacity allocated from the data, so nothing is dropped), and padded to its
bucket's edge count; a structure with two atoms at one position is a :class:`DataError` naming
it. Positions are stored wrapped into the cell (centred in free space), so the float32 cast of a
batch keeps their precision. A batch (:class:`Batch`) is a :class:`jat.graph.Graph` of a set of
rows of one bucket with their labels; a short last batch is filled with copies of a real row
whose weight is zero, so shapes stay static and padding never changes a loss or a metric.

Two layouts (``build_dataset(..., neighbor_lists=)``): ``"stored"`` keeps every structure's
edge list on the host (:class:`Bucket`); ``"per_batch"`` keeps only compact rows (species as
int8, positions and forces in the training dtype, no edges: :class:`PackedBucket`) and builds
each batch's neighbour lists on the device, inside one jitted call, with a capacity measured
once by the same jitted build. A data set read through a lazy sequence is packed chunk by
chunk, so its structures never all exist as objects at once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jat import graph
from jat.data.structure import DataError, Structure
from jat.data.table import StructureTable
from jat.graph.errors import INPUT
from jat.graph.geometry import reduce_positions
from jat.properties import Target

GRAPH_CHUNK = 64  # structures per vmapped neighbour-list build
PACK_CHUNK = 4096  # structures per packed block (and per capacity-counting build)
#: spare edge slots of a per-batch bucket over the most edges counted (relative, absolute):
#: the count runs the same jitted build, so this only guards against rounding at the cutoff
EDGE_MARGIN = (1.02, 8)
NEIGHBOR_LISTS = ("stored", "per_batch")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """B structures of one bucket as one disjoint graph, with their labels.

    graph: the :class:`jat.graph.Graph` (B·n atom slots); energy (B,) eV, the reference energy
    less the composition shift Σ μ_Z (0 where unknown); energy_weight (B,) 1 for real
    structures with an energy, else 0; forces (B·n, 3) eV/Å; forces_weight (B,) likewise for
    forces; n_atoms (B,); weight (B,) 1 for real structures, 0 for the fill of a short batch;
    properties: per property target key its labels less their reference (B,), or (B·n,) for an
    atomic target (0 where unknown); property_weight: per key (B,) 1 for real structures with
    that label, else 0; graph_error: for lists built with the batch (:class:`PackedBucket`),
    (B,) int32 :mod:`jat.graph` error codes (0 = complete), else None.
    """

    graph: graph.Graph
    energy: jax.Array
    energy_weight: jax.Array
    forces: jax.Array
    forces_weight: jax.Array
    n_atoms: jax.Array
    weight: jax.Array
    properties: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
    property_weight: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
    graph_error: jax.Array | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Bucket:
    """Rows of equally padded structures: M structures, N atom slots, E edge slots.

    species (M, N) int32 (−1 = padding); positions (M, N, 3) Å; cell (M, 3, 3) Å; senders,
    receivers (M, E) int32 (padding = N); shifts (M, E, 3) int32; edge_mask (M, E) bool;
    energy (M,) eV: reference energy minus the composition shift Σ μ_Z (0 where unknown);
    has_energy (M,) bool; forces (M, N, 3) eV/Å; has_forces (M,) bool; n_atoms (M,) int32;
    index (M,) position of each row's structure in the data set; properties: per property
    target key the labels less their reference (:meth:`jat.properties.Target.reference`,
    float64), (M,) or (M, N) for an atomic target; has_property: per key (M,) bool.
    """

    species: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    edge_mask: np.ndarray
    energy: np.ndarray
    has_energy: np.ndarray
    forces: np.ndarray
    has_forces: np.ndarray
    n_atoms: np.ndarray
    index: np.ndarray
    properties: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    has_property: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(atom slots, edge slots) of every row."""
        return self.species.shape[1], self.senders.shape[1]

    def __len__(self) -> int:
        return len(self.index)

    def element_counts(self, n_species: int) -> np.ndarray:
        """(M, S) number of atoms of each species per row."""
        counts = np.zeros((len(self), n_species + 1))
        np.add.at(counts, (np.arange(len(self))[:, None], self.species), 1.0)
        return counts[:, :n_species]  # index −1 (padding) lands in the last column

    def with_energy_shift(self, delta: np.ndarray) -> Bucket:
        """The bucket with Σ δμ_Z more subtracted from its reference energies (eV)."""
        return dataclasses.replace(
            self, energy=self.energy - self.element_counts(len(delta)) @ delta
        )

    def with_edge_slots(self, width: int) -> Bucket:
        """The bucket padded to ``width`` >= its edge slots (padding edges as everywhere)."""
        m, n_slots = self.species.shape
        extra = width - self.senders.shape[1]
        if extra < 0:
            raise ValueError(f"cannot shrink {self.senders.shape[1]} edge slots to {width}")
        if extra == 0:
            return self
        pad = np.full((m, extra), n_slots, np.int32)
        return dataclasses.replace(
            self,
            senders=np.concatenate([self.senders, pad], axis=1),
            receivers=np.concatenate([self.receivers, pad], axis=1),
            shifts=np.concatenate([self.shifts, np.zeros((m, extra, 3), np.int32)], axis=1),
            edge_mask=np.concatenate([self.edge_mask, np.zeros((m, extra), bool)], axis=1),
        )

    def batch(self, rows: np.ndarray, size: int, dtype) -> Batch:
        """A batch of ``size`` rows (``rows`` padded with weight-zero copies of its first row)."""
        rows, weight = fill_rows(rows, size)
        g = graph.batch_graph(
            jnp.asarray(self.species[rows]),
            jnp.asarray(self.positions[rows], dtype),
            jnp.asarray(self.cell[rows], dtype),
            jnp.asarray(self.senders[rows]),
            jnp.asarray(self.receivers[rows]),
            jnp.asarray(self.shifts[rows]),
            jnp.asarray(self.edge_mask[rows]),
        )
        return labelled_batch(self, g, rows, weight, dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class PackedBucket:
    """Rows of equally padded structures without edge lists: M structures, N atom slots, and
    the :class:`jat.graph.NeighborSpec` (one periodicity, E edge slots) of their lists, which
    :meth:`batch` builds on the device.

    species (M, N) int8 (−1 = padding); positions (M, N, 3) Å and cell (M, 3, 3) Å in the
    storage dtype; forces (M, N, 3) eV/Å likewise; the other fields as in :class:`Bucket`.
    """

    species: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    spec: graph.NeighborSpec
    energy: np.ndarray
    has_energy: np.ndarray
    forces: np.ndarray
    has_forces: np.ndarray
    n_atoms: np.ndarray
    index: np.ndarray
    properties: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    has_property: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(atom slots, edge slots) of every row."""
        return self.species.shape[1], self.spec.capacity

    def __len__(self) -> int:
        return len(self.index)

    element_counts = Bucket.element_counts
    with_energy_shift = Bucket.with_energy_shift

    def with_edge_slots(self, width: int) -> PackedBucket:
        """The bucket with ``width`` >= its edge slots."""
        if width < self.spec.capacity:
            raise ValueError(f"cannot shrink {self.spec.capacity} edge slots to {width}")
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, capacity=width))

    def batch(self, rows: np.ndarray, size: int, dtype) -> Batch:
        """A batch of ``size`` rows as :meth:`Bucket.batch` gives it; the neighbour lists are
        built on the device (nothing waits for them) and their error codes kept in
        ``graph_error``, for :func:`check_graph_errors` once the host reads them."""
        rows, weight = fill_rows(rows, size)
        g, error = device_graph(
            jnp.asarray(self.species[rows], jnp.int32),
            jnp.asarray(self.positions[rows], dtype),
            jnp.asarray(self.cell[rows], dtype),
            self.spec,
        )
        return dataclasses.replace(labelled_batch(self, g, rows, weight, dtype), graph_error=error)


def fill_rows(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` padded to ``size`` with copies of its first row, and the weights (size,): 1 for
    the given rows, 0 for the fill."""
    rows = np.asarray(rows)
    weight = np.zeros(size)
    weight[: len(rows)] = 1.0
    return np.concatenate([rows, np.full(size - len(rows), rows[0], rows.dtype)]), weight


def labelled_batch(
    bucket: Bucket | PackedBucket, g: graph.Graph, rows: np.ndarray, weight: np.ndarray, dtype
) -> Batch:
    """The :class:`Batch` of graph ``g`` with the labels of ``rows`` of ``bucket``."""
    return Batch(
        graph=g,
        energy=jnp.asarray(bucket.energy[rows], dtype),
        energy_weight=jnp.asarray(weight * bucket.has_energy[rows], dtype),
        forces=jnp.asarray(bucket.forces[rows].reshape(-1, 3), dtype),
        forces_weight=jnp.asarray(weight * bucket.has_forces[rows], dtype),
        n_atoms=jnp.asarray(bucket.n_atoms[rows], dtype),
        weight=jnp.asarray(weight, dtype),
        properties={
            k: jnp.asarray(v[rows].reshape(-1), dtype) for k, v in bucket.properties.items()
        },
        property_weight={
            k: jnp.asarray(weight * v[rows], dtype) for k, v in bucket.has_property.items()
        },
    )


def _vmapped_build(positions, cell, mask, spec: graph.NeighborSpec) -> graph.Neighbors:
    periodic = any(spec.pbc)
    build = jax.vmap(graph.build, in_axes=(0, 0 if periodic else None, 0, None))
    return build(positions, cell if periodic else None, mask, spec)


@functools.partial(jax.jit, static_argnums=3)
def device_graph(species, positions, cell, spec: graph.NeighborSpec):
    """The batch graph of B padded structures, species (B, n) (−1 = padding), positions
    (B, n, 3) Å, cell (B, 3, 3) Å, with neighbour lists built here (jitted, ``spec`` static),
    and the builds' error codes (B,) int32."""
    nb = _vmapped_build(positions, cell, species >= 0, spec)
    g = graph.batch_graph(species, positions, cell, nb.senders, nb.receivers, nb.shifts, nb.mask)
    return g, nb.error


def check_graph_errors(errors: Sequence[np.ndarray | None], names) -> None:
    """Raise if a device-built batch's neighbour lists were incomplete: ``errors`` holds per
    batch its host ``Batch.graph_error`` (or None); ``names(k)`` describes batch k's structures.
    The capacity is measured on the same data with the same build, so this is a bug guard: no
    loss or metric is reported from lists that dropped edges."""
    for k, error in enumerate(errors):
        if error is None:
            continue
        codes = np.asarray(error).reshape(-1)
        bad = codes[codes != 0]
        if len(bad):
            raise RuntimeError(
                f"the neighbour lists built for the batch of {names(k)} are incomplete "
                f"({graph.describe(int(np.bitwise_or.reduce(bad)))}) although their capacity "
                "was measured on these structures; please report this. As a workaround set "
                "training.neighbor_lists: stored"
            )


@functools.partial(jax.jit, static_argnums=3)
def _edge_counts(positions, cell, mask, spec: graph.NeighborSpec):
    nb = _vmapped_build(positions, cell, mask, spec)
    return _Counts(nb.n_edges, nb.error)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Counts:
    """What :func:`jat.graph.grow` reads of a batched build: edges found and error codes."""

    n_edges: jax.Array
    error: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A split (training, validation, …) as buckets; ``structures`` is the sequence they were
    built from (for names in messages; it may be lazy)."""

    buckets: tuple[Bucket | PackedBucket, ...]
    structures: Sequence[Structure]

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def n_atoms(self) -> int:
        return int(sum(int(np.sum(b.n_atoms)) for b in self.buckets))

    def with_energy_shift(self, delta: np.ndarray) -> Dataset:
        """The data set with Σ δμ_Z more subtracted from every reference energy (eV)."""
        return Dataset(tuple(b.with_energy_shift(delta) for b in self.buckets), self.structures)

    def batches(
        self, batch_size: int, rng: np.random.Generator | None = None
    ) -> list[tuple[int, np.ndarray]]:
        """(bucket number, rows) of every batch of an epoch; shuffled within and across buckets
        when ``rng`` is given, else in order."""
        out = []
        for b, bucket in enumerate(self.buckets):
            rows = np.arange(len(bucket))
            if rng is not None:
                rows = rng.permutation(rows)
            out.extend((b, rows[k : k + batch_size]) for k in range(0, len(rows), batch_size))
        if rng is not None:
            out = [out[k] for k in rng.permutation(len(out))]
        return out

    def iterate(
        self, batch_size: int, dtype, rng: np.random.Generator | None = None
    ) -> Iterator[tuple[int, Batch]]:
        for b, rows in self.batches(batch_size, rng):
            yield b, self.buckets[b].batch(rows, batch_size, dtype)


def align_edge_slots(datasets: dict[str, Dataset]) -> dict[str, Dataset]:
    """Give buckets with the same atom slots the same edge slots in every data set, so that
    training and evaluation share their static shapes (fewer compilations)."""
    widths: dict[int, int] = {}
    for data in datasets.values():
        for b in data.buckets:
            widths[b.shape[0]] = max(widths.get(b.shape[0], 0), b.shape[1])
    return {
        name: Dataset(
            tuple(b.with_edge_slots(widths[b.shape[0]]) for b in data.buckets), data.structures
        )
        for name, data in datasets.items()
    }


def choose_buckets(sizes: Sequence[int], max_buckets: int) -> list[int]:
    """Upper bounds of at most ``max_buckets`` atom-count buckets minimising the padded slots
    Σ_k bound(n_k) over structures (dynamic programming over the distinct sizes)."""
    if not len(sizes):
        return []
    values, counts = np.unique(np.asarray(sizes), return_counts=True)
    k = len(values)
    m = min(max_buckets, k)
    prefix = np.concatenate([[0], np.cumsum(counts)])
    inf = float("inf")
    # cost[j][i]: best cost of covering values[:i] with j buckets; the last bucket ends at i-1
    cost = np.full((m + 1, k + 1), inf)
    back = np.zeros((m + 1, k + 1), int)
    cost[0, 0] = 0.0
    for j in range(1, m + 1):
        for i in range(1, k + 1):
            starts = np.arange(i)
            c = cost[j - 1, :i] + (prefix[i] - prefix[starts]) * values[i - 1]
            best = int(np.argmin(c))
            cost[j, i], back[j, i] = c[best], best
    j = int(np.argmin(cost[1:, k])) + 1
    bounds, i = [], k
    while i > 0:
        bounds.append(int(values[i - 1]))
        i, j = back[j, i], j - 1
    return sorted(bounds)


def build_dataset(
    structures: Sequence[Structure],
    species: Sequence[str],
    cutoff: float,
    energy_shift: np.ndarray,
    bounds: Sequence[int],
    targets: Sequence[Target] = (),
    neighbor_lists: str = "stored",
    dtype=np.float64,
) -> Dataset:
    """Pad ``structures`` into buckets with upper atom counts ``bounds`` (see
    :func:`choose_buckets`) and build their neighbour lists with cutoff ``cutoff`` (Å).

    ``energy_shift`` (S,) μ_Z in eV is subtracted from the reference energies in float64, and
    each property target's reference from its labels (``targets``: :class:`Target` values).
    ``neighbor_lists``: ``"stored"`` (:class:`Bucket`) or ``"per_batch"``
    (:class:`PackedBucket`, positions and forces kept in ``dtype``; ``structures`` is read once,
    in order, and may be a lazy sequence).
    """
    if neighbor_lists not in NEIGHBOR_LISTS:
        raise ValueError(f"neighbor_lists must be one of {NEIGHBOR_LISTS}, got {neighbor_lists!r}")
    lookup = {s: k for k, s in enumerate(species)}
    bounds = sorted(bounds)
    if neighbor_lists == "per_batch":
        return _packed_dataset(
            structures, lookup, cutoff, energy_shift, bounds, targets, np.dtype(dtype)
        )
    members: dict[int, list[int]] = {b: [] for b in bounds}
    for k, s in enumerate(structures):
        members[_bound_of(s, bounds)].append(k)
    buckets = []
    for bound in bounds:
        if members[bound]:
            rows = [structures[k] for k in members[bound]]
            bucket = _bucket(rows, members[bound], bound, lookup, cutoff, energy_shift)
            buckets.append(_with_properties(bucket, rows, targets, lookup))
    kept = structures if isinstance(structures, StructureTable) else tuple(structures)
    return Dataset(tuple(buckets), kept)


def _bound_of(s: Structure, bounds: Sequence[int]) -> int:
    bound = next((b for b in bounds if b >= s.n_atoms), None)
    if bound is None:
        raise ValueError(f"{s.source}: {s.n_atoms} atoms exceed the largest bucket {bounds}")
    return bound


def _packed_dataset(structures, lookup, cutoff, energy_shift, bounds, targets, dtype) -> Dataset:
    packers: dict[tuple[int, tuple[bool, bool, bool]], _Packer] = {}
    for k, s in enumerate(structures):
        key = (_bound_of(s, bounds), tuple(bool(p) for p in s.pbc))
        if key not in packers:
            packers[key] = _Packer(key[0], key[1], lookup, energy_shift, targets, dtype)
        packers[key].add(k, s)
    buckets = tuple(packers[key].finish(cutoff, structures) for key in sorted(packers))
    return Dataset(buckets, structures)


class _Packer:
    """Fills the compact rows of one (atom slots, periodicity) bucket block by block."""

    def __init__(self, n_slots, pbc, lookup, energy_shift, targets, dtype):
        self.n_slots, self.pbc, self.lookup = n_slots, pbc, lookup
        self.energy_shift, self.targets, self.dtype = energy_shift, targets, dtype
        self.blocks: list[dict[str, np.ndarray]] = []
        self.used = PACK_CHUNK

    def _new_block(self) -> dict[str, np.ndarray]:
        c, n = PACK_CHUNK, self.n_slots
        block = _empty_rows(c, n, self.dtype, np.int8)
        block["index"] = np.zeros(c, np.int64)
        for t in self.targets:
            block[f"p:{t.key}"] = np.zeros((c, n) if t.kind == "atomic" else c)
            block[f"h:{t.key}"] = np.zeros(c, bool)
        return block

    def add(self, k: int, s: Structure) -> None:
        if self.used == PACK_CHUNK:
            self.blocks.append(self._new_block())
            self.used = 0
        block, r = self.blocks[-1], self.used
        _put_row(block, r, s, self.lookup, self.energy_shift)
        block["index"][r] = k
        for t in self.targets:
            block[f"p:{t.key}"][r], block[f"h:{t.key}"][r] = _property_row(
                t, s, self.lookup, self.n_slots
            )
        self.used += 1

    def finish(self, cutoff: float, structures: Sequence[Structure]) -> PackedBucket:
        m = (len(self.blocks) - 1) * PACK_CHUNK + self.used
        rows = {}
        for name in list(self.blocks[0]):  # field by field: one field's copy at a time
            rows[name] = np.concatenate([b.pop(name) for b in self.blocks])[:m]
        self.blocks = []
        spec = _packed_spec(rows, self.pbc, cutoff, structures)
        return PackedBucket(
            species=rows["species"],
            positions=rows["positions"],
            cell=rows["cell"],
            spec=spec,
            energy=rows["energy"],
            has_energy=rows["has_energy"],
            forces=rows["forces"],
            has_forces=rows["has_forces"],
            n_atoms=rows["n_atoms"],
            index=rows["index"],
            properties={t.key: rows[f"p:{t.key}"] for t in self.targets},
            has_property={t.key: rows[f"h:{t.key}"] for t in self.targets},
        )


def _packed_spec(rows, pbc, cutoff: float, structures) -> graph.NeighborSpec:
    """The spec of a per-batch bucket: capacity for the most edges any row has (counted with
    the jitted build the batches use, chunk by chunk), with :data:`EDGE_MARGIN` to spare;
    a structure the build rejects (atoms at one position, a bad cell) is a DataError."""
    positions, cell, mask = rows["positions"], rows["cell"], rows["species"] >= 0
    m, n_slots = mask.shape
    periodic = any(pbc)
    head = slice(0, min(m, GRAPH_CHUNK))
    spec = graph.allocate(
        positions[head], cutoff, cell=cell[head] if periodic else None, pbc=pbc,
        mask=mask[head], estimate=True,
    )
    chunk = min(PACK_CHUNK, m)

    def run(spec):
        parts = []
        for start in range(0, m, chunk):
            sel = np.arange(start, start + chunk) % m
            out = _edge_counts(
                jnp.asarray(positions[sel], positions.dtype),
                jnp.asarray(cell[sel], positions.dtype),
                jnp.asarray(mask[sel]),
                spec,
            )
            parts.append(jax.tree.map(np.asarray, out))
        return _Counts(
            np.concatenate([p.n_edges for p in parts])[:m],
            np.concatenate([p.error for p in parts])[:m],
        )

    counts, spec = graph.fit(
        run,
        spec,
        lambda spec, c, _: graph.grow(spec, c, headroom=1.0, n_atoms=n_slots),
        error=lambda c: np.bitwise_or.reduce(c.error),
        what="neighbour lists of the training data",
    )
    bad = np.flatnonzero(counts.error & int(INPUT))
    if len(bad):
        r = int(bad[0])
        s = structures[int(rows["index"][r])]
        one = slice(r, r + 1)
        pos = reduce_positions(s.positions, s.cell, s.pbc)[None]
        species = rows["species"][one].astype(np.int32)[:, : s.n_atoms]
        edges = _edges(pos, s.cell[None], np.ones((1, s.n_atoms), bool), pbc, cutoff)
        _check_coincident(edges, [s], pos, s.cell[None], species)
        raise DataError(f"{s.source}: invalid structure ({graph.describe(int(counts.error[r]))})")
    relative, absolute = EDGE_MARGIN
    most = int(counts.n_edges.max(initial=0))
    width = -(-int(most * relative + absolute) // 8) * 8
    if not periodic:  # a free structure has at most n (n − 1) directed edges
        width = min(width, max(n_slots * (n_slots - 1), 1))
    return dataclasses.replace(spec, capacity=width)


def _with_properties(
    bucket: Bucket, rows: Sequence[Structure], targets: Sequence[Target], lookup
) -> Bucket:
    """``bucket`` with the labels of ``targets`` (less their references) and their masks."""
    n_slots = bucket.species.shape[1]
    labels, has = {}, {}
    for t in targets:
        values, known = zip(*(_property_row(t, s, lookup, n_slots) for s in rows), strict=True)
        labels[t.key], has[t.key] = np.stack(values), np.array(known, bool)
    return dataclasses.replace(bucket, properties=labels, has_property=has)


def _property_row(t: Target, s: Structure, lookup, n_slots: int) -> tuple[np.ndarray, bool]:
    """The label of target ``t`` of ``s`` less its reference ((N slots,) for an atomic target,
    else a scalar) and whether it is known (present and finite; 0 where not)."""
    atomic = t.kind == "atomic"
    values = np.zeros(n_slots if atomic else ())
    if t.key not in s.properties:
        return values, False
    value = np.asarray(s.properties[t.key], np.float64)
    z = _species_indices(s, lookup)
    if atomic:
        if value.shape != (s.n_atoms,):
            raise DataError(f"{s.source}: property {t.key!r} has shape {value.shape}, "
                            f"expected one value per atom ({s.n_atoms},)")
        values[: s.n_atoms] = value - t.reference(z)
    else:
        if value.ndim:
            raise DataError(f"{s.source}: property {t.key!r} has shape {value.shape}; "
                            f"a {t.kind} target needs one number per structure")
        values = np.asarray(float(value) - t.reference(z))
    known = bool(np.isfinite(values).all())
    return (values if known else np.zeros_like(values)), known


def _species_indices(s: Structure, lookup: dict[str, int]) -> np.ndarray:
    try:
        return np.array([lookup[x] for x in s.symbols], np.int32)
    except KeyError:
        bad = sorted(set(s.symbols) - set(lookup))
        raise DataError(
            f"{s.source}: element(s) {bad} not among the model's species {sorted(lookup)}"
        ) from None


def _empty_rows(m: int, n_slots: int, dtype=np.float64, species_dtype=np.int32):
    """Zeroed per-row arrays of M structures with N atom slots (species −1 = padding)."""
    return {
        "species": np.full((m, n_slots), -1, species_dtype),
        "positions": np.zeros((m, n_slots, 3), dtype),
        "cell": np.zeros((m, 3, 3), dtype),
        "energy": np.zeros(m),
        "has_energy": np.zeros(m, bool),
        "forces": np.zeros((m, n_slots, 3), dtype),
        "has_forces": np.zeros(m, bool),
        "n_atoms": np.zeros(m, np.int32),
    }


def _put_row(rows: dict[str, np.ndarray], r: int, s: Structure, lookup, energy_shift) -> None:
    """Row ``r`` of ``rows`` (:func:`_empty_rows`) from ``s``: positions wrapped into the cell
    (centred in free space), the energy less Σ μ_Z in float64."""
    n = s.n_atoms
    z = _species_indices(s, lookup)
    rows["species"][r, :n] = z
    rows["positions"][r, :n] = reduce_positions(s.positions, s.cell, s.pbc)
    rows["cell"][r] = s.cell
    rows["n_atoms"][r] = n
    if s.energy is not None:
        rows["energy"][r] = s.energy - float(np.sum(energy_shift[z]))
        rows["has_energy"][r] = True
    if s.forces is not None:
        rows["forces"][r, :n] = s.forces
        rows["has_forces"][r] = True


def _bucket(rows, index, n_slots, lookup, cutoff, energy_shift) -> Bucket:
    m = len(rows)
    arrays = _empty_rows(m, n_slots)
    for r, s in enumerate(rows):
        _put_row(arrays, r, s, lookup, energy_shift)
    species, positions, cell = arrays["species"], arrays["positions"], arrays["cell"]
    pbcs = [s.pbc for s in rows]
    parts = []
    for pbc in sorted(set(pbcs)):
        sel = np.array([k for k, p in enumerate(pbcs) if p == pbc])
        edges = _edges(positions[sel], cell[sel], species[sel] >= 0, pbc, cutoff)
        _check_coincident(edges, [rows[k] for k in sel], positions[sel], cell[sel], species[sel])
        parts.append((sel, edges[:4]))
    width = max(8, -(-max(int(e[3].max()) for _, e in parts) // 8) * 8)
    senders = np.full((m, width), n_slots, np.int32)
    receivers = senders.copy()
    shifts = np.zeros((m, width, 3), np.int32)
    for sel, (snd, rcv, sft, count) in parts:
        for r, k in enumerate(sel):
            c = int(count[r])
            senders[k, :c], receivers[k, :c], shifts[k, :c] = snd[r, :c], rcv[r, :c], sft[r, :c]
    return Bucket(
        species=species,
        positions=positions,
        cell=cell,
        senders=senders,
        receivers=receivers,
        shifts=shifts,
        edge_mask=np.arange(width)[None, :] < _counts(parts, m),
        energy=arrays["energy"],
        has_energy=arrays["has_energy"],
        forces=arrays["forces"],
        has_forces=arrays["has_forces"],
        n_atoms=arrays["n_atoms"],
        index=np.asarray(index, np.int64),
    )


def _counts(parts, m: int) -> np.ndarray:
    out = np.zeros((m, 1), np.int64)
    for sel, (_, _, _, count) in parts:
        out[sel, 0] = count
    return out


def _edges(positions, cell, mask, pbc, cutoff):
    """Neighbour lists of M structures padded alike: senders, receivers, shifts (M, E), counts
    and error codes (M,).

    The spec is allocated on all M structures at once (exact count, no headroom), then the list
    is built in vmapped chunks in float64; an overflow (which allocation rules out) is grown.
    """
    periodic = any(pbc)
    spec = graph.allocate(
        positions, cutoff, cell=cell if periodic else None, pbc=pbc, mask=mask, headroom=1.0
    )
    m = len(positions)
    chunk = min(GRAPH_CHUNK, m)
    build = jax.jit(
        jax.vmap(graph.build, in_axes=(0, 0 if periodic else None, 0, None)), static_argnums=3
    )

    def run(spec):
        outs = []
        for start in range(0, m, chunk):
            sel = np.arange(start, start + chunk) % m
            nb = build(positions[sel], cell[sel] if periodic else None, mask[sel], spec)
            outs.append(jax.tree.map(np.asarray, nb))
        return jax.tree.map(lambda *x: np.concatenate(x)[:m], *outs)

    with jax.enable_x64(True):
        nbrs, _ = graph.fit(
            run,
            spec,
            lambda spec, nb, _: graph.grow(spec, nb, headroom=1.0, n_atoms=positions.shape[1]),
            error=lambda nb: nb.error,
            what="neighbour lists of the training data",
        )
    return nbrs.senders, nbrs.receivers, nbrs.shifts, nbrs.n_edges, nbrs.error


def _check_coincident(edges, structures, positions, cell, species) -> None:
    """DataError naming the first structure whose neighbour search found atoms at one position
    (or another invalid input)."""
    senders, receivers, shifts, counts, errors = edges
    for r, code in enumerate(np.asarray(errors)):
        code = int(code)
        if not code & int(INPUT):
            continue
        s = structures[r]
        if code & graph.GraphError.COINCIDENT:
            e = np.arange(senders.shape[1]) < counts[r]
            nb = graph.Neighbors(senders[r], receivers[r], shifts[r], e, counts[r], code)
            one = graph.single_graph(species[r], positions[r], cell[r], nb)
            pairs = graph.coincident_pairs(one)
            if pairs:
                i, j, d = pairs[0]
                raise DataError(
                    f"{s.source}: atoms {i} ({s.symbols[i]}) and {j} ({s.symbols[j]}) are "
                    f"{d:.2g} Å apart (atoms at the same position)"
                )
        raise DataError(f"{s.source}: invalid structure ({graph.describe(code)})")
