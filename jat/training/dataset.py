"""Training data as padded arrays in a few static shapes ("buckets"), with neighbour lists.

Structures are grouped into at most ``max_buckets`` atom-count buckets chosen to minimise the
number of padded atom slots. Every structure's neighbour list is built once, with
:mod:`jat.graph` (capacity allocated from the data, so nothing is dropped), and padded to its
bucket's edge count; a structure with two atoms at one position is a :class:`DataError` naming
it. Positions are stored wrapped into the cell (centred in free space), so the float32 cast of a
batch keeps their precision. A batch (:class:`Batch`) is a :class:`jat.graph.Graph` of a set of
rows of one bucket with their labels; a short last batch is filled with copies of a real row
whose weight is zero, so shapes stay static and padding never changes a loss or a metric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jat import graph
from jat.data.structure import DataError, Structure
from jat.graph.errors import INPUT
from jat.graph.geometry import reduce_positions
from jat.properties import Target

GRAPH_CHUNK = 64  # structures per vmapped neighbour-list build


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
    that label, else 0.
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
        rows = np.asarray(rows)
        weight = np.zeros(size)
        weight[: len(rows)] = 1.0
        rows = np.concatenate([rows, np.full(size - len(rows), rows[0], rows.dtype)])
        g = graph.batch_graph(
            jnp.asarray(self.species[rows]),
            jnp.asarray(self.positions[rows], dtype),
            jnp.asarray(self.cell[rows], dtype),
            jnp.asarray(self.senders[rows]),
            jnp.asarray(self.receivers[rows]),
            jnp.asarray(self.shifts[rows]),
            jnp.asarray(self.edge_mask[rows]),
        )
        return Batch(
            graph=g,
            energy=jnp.asarray(self.energy[rows], dtype),
            energy_weight=jnp.asarray(weight * self.has_energy[rows], dtype),
            forces=jnp.asarray(self.forces[rows].reshape(-1, 3), dtype),
            forces_weight=jnp.asarray(weight * self.has_forces[rows], dtype),
            n_atoms=jnp.asarray(self.n_atoms[rows], dtype),
            weight=jnp.asarray(weight, dtype),
            properties={
                k: jnp.asarray(v[rows].reshape(-1), dtype)
                for k, v in self.properties.items()
            },
            property_weight={
                k: jnp.asarray(weight * v[rows], dtype) for k, v in self.has_property.items()
            },
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A split (training, validation, …) as buckets; ``structures`` keeps the originals."""

    buckets: tuple[Bucket, ...]
    structures: tuple[Structure, ...]

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def n_atoms(self) -> int:
        return int(sum(s.n_atoms for s in self.structures))

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
) -> Dataset:
    """Pad ``structures`` into buckets with upper atom counts ``bounds`` (see
    :func:`choose_buckets`) and build their neighbour lists with cutoff ``cutoff`` (Å).

    ``energy_shift`` (S,) μ_Z in eV is subtracted from the reference energies in float64, and
    each property target's reference from its labels (``targets``: :class:`Target` values).
    """
    lookup = {s: k for k, s in enumerate(species)}
    bounds = sorted(bounds)
    members: dict[int, list[int]] = {b: [] for b in bounds}
    for k, s in enumerate(structures):
        bound = next((b for b in bounds if b >= s.n_atoms), None)
        if bound is None:
            raise ValueError(f"{s.source}: {s.n_atoms} atoms exceed the largest bucket {bounds}")
        members[bound].append(k)
    buckets = []
    for bound in bounds:
        if members[bound]:
            rows = [structures[k] for k in members[bound]]
            bucket = _bucket(rows, members[bound], bound, lookup, cutoff, energy_shift)
            buckets.append(_with_properties(bucket, rows, targets, lookup))
    return Dataset(tuple(buckets), tuple(structures))


def _with_properties(
    bucket: Bucket, rows: Sequence[Structure], targets: Sequence[Target], lookup
) -> Bucket:
    """``bucket`` with the labels of ``targets`` (less their references) and their masks."""
    m, n_slots = bucket.species.shape
    labels, has = {}, {}
    for t in targets:
        atomic = t.kind == "atomic"
        values = np.zeros((m, n_slots) if atomic else m)
        known = np.zeros(m, bool)
        for r, s in enumerate(rows):
            if t.key not in s.properties:
                continue
            value = np.asarray(s.properties[t.key], np.float64)
            z = _species_indices(s, lookup)
            if atomic:
                if value.shape != (s.n_atoms,):
                    raise DataError(f"{s.source}: property {t.key!r} has shape {value.shape}, "
                                    f"expected one value per atom ({s.n_atoms},)")
                values[r, : s.n_atoms] = value - t.reference(z)
            else:
                if value.ndim:
                    raise DataError(f"{s.source}: property {t.key!r} has shape {value.shape}; "
                                    f"a {t.kind} target needs one number per structure")
                values[r] = float(value) - t.reference(z)
            known[r] = np.isfinite(values[r]).all()
            if not known[r]:
                values[r] = 0.0
        labels[t.key], has[t.key] = values, known
    return dataclasses.replace(bucket, properties=labels, has_property=has)


def _species_indices(s: Structure, lookup: dict[str, int]) -> np.ndarray:
    try:
        return np.array([lookup[x] for x in s.symbols], np.int32)
    except KeyError:
        bad = sorted(set(s.symbols) - set(lookup))
        raise DataError(
            f"{s.source}: element(s) {bad} not among the model's species {sorted(lookup)}"
        ) from None


def _bucket(rows, index, n_slots, lookup, cutoff, energy_shift) -> Bucket:
    m = len(rows)
    species = np.full((m, n_slots), -1, np.int32)
    positions = np.zeros((m, n_slots, 3))
    cell = np.zeros((m, 3, 3))
    energy = np.zeros(m)
    has_energy = np.zeros(m, bool)
    forces = np.zeros((m, n_slots, 3))
    has_forces = np.zeros(m, bool)
    n_atoms = np.zeros(m, np.int32)
    for r, s in enumerate(rows):
        n = s.n_atoms
        z = _species_indices(s, lookup)
        species[r, :n] = z
        positions[r, :n] = reduce_positions(s.positions, s.cell, s.pbc)
        cell[r] = s.cell
        n_atoms[r] = n
        if s.energy is not None:
            energy[r] = s.energy - float(np.sum(energy_shift[z]))
            has_energy[r] = True
        if s.forces is not None:
            forces[r, :n] = s.forces
            has_forces[r] = True
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
        energy=energy,
        has_energy=has_energy,
        forces=forces,
        has_forces=has_forces,
        n_atoms=n_atoms,
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
