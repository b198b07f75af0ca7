"""The skin (Verlet) list: one jittable neighbour list reused between steps, for the ASE calculator
and for JAX-MD.

The list holds every pair closer than ``cutoff + skin`` at its last build. While no atom has moved
more than ``skin / 2`` since then and the cell is unchanged, every pair now closer than the cutoff
is still in it, so :meth:`SkinList.update` (jittable) keeps it, and rebuilds it on the device
(``lax.cond``) otherwise. The model does not run on the whole list: :meth:`SkinList.graph`
compacts the edges now within the cutoff, in receiver order, into ``capacity`` static slots
(:func:`compact`), so a step costs what it costs on a list without skin.

Nothing under ``jit`` raises: ``error`` accumulates :class:`jat.graph.GraphError` bits (list
edges, cell-list bins, periodic images, model slots, coincident atoms, invalid input) from the
allocation on, and the host re-allocates with :func:`allocate_skin` (through
:func:`jat.graph.fit`) or reports the input error.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jat.graph.errors import GROWABLE, MIN_DISTANCE, GraphError, combine, flag
from jat.graph.graph import Graph, single_graph
from jat.graph.neighbors import EDGE_HEADROOM, NeighborSpec, allocate, build, capacity_bucket

DEFAULT_SKIN = 0.5  # Å
# model slots over the edges within the cutoff at allocation: the same headroom as list edges
# (an edge count that drifts past it makes the list re-allocate, never an edge dropped)
SLOT_HEADROOM = EDGE_HEADROOM


def within_cutoff(graph: Graph, cutoff: float, vectors=None) -> tuple[jax.Array, jax.Array]:
    """(E,) the real edges of ``graph`` now shorter than ``cutoff``, and () whether one of them
    is shorter than MIN_DISTANCE (atoms at the same position). No gradient flows through it.
    ``vectors``: the graph's edge vectors when the caller has them already."""
    vectors = jax.lax.stop_gradient(graph.edge_vectors() if vectors is None else vectors)
    d2 = jnp.sum(vectors * vectors, axis=-1)
    within = graph.edge_mask & (d2 < cutoff * cutoff)
    return within, jnp.any(within & (d2 < MIN_DISTANCE * MIN_DISTANCE))


def slot_error(count, capacity: int, coincident) -> jax.Array:
    """The error code of ``count`` edges within the cutoff for ``capacity`` model slots."""
    return combine(
        flag(count > capacity, GraphError.MODEL_SLOTS), flag(coincident, GraphError.COINCIDENT)
    )


def compact(graph: Graph, cutoff: float, capacity: int, ordered: bool = True, vectors=None):
    """The edges of ``graph`` now shorter than ``cutoff``, compacted into ``capacity`` slots.

    Keeps the receiver order (``ordered=False``: the receivers are sorted first, for lists that
    are not). Returns ``(graph, n_within, error)``: the compacted graph (edges beyond
    ``capacity`` are dropped, and ``error`` then has ``MODEL_SLOTS``), the number of edges within
    the cutoff, and the error code (``COINCIDENT`` for an edge shorter than MIN_DISTANCE).
    No gradient flows through the selection (only through the later edge vectors). ``vectors``:
    the graph's edge vectors when the caller has them already.
    """
    n = graph.n_nodes
    within, coincident = within_cutoff(graph, cutoff, vectors)
    senders, receivers, shifts = graph.senders, graph.receivers, graph.shifts
    if not ordered:
        order = jnp.argsort(jnp.where(within, receivers, n), stable=True)
        senders, receivers, shifts, within = (
            senders[order], receivers[order], shifts[order], within[order]
        )
    count = jnp.sum(within, dtype=jnp.int32)
    (idx,) = jnp.nonzero(within, size=capacity, fill_value=0)
    valid = jnp.arange(capacity) < count
    out = graph.with_edges(
        jnp.where(valid, senders[idx], n).astype(jnp.int32),
        jnp.where(valid, receivers[idx], n).astype(jnp.int32),
        jnp.where(valid[:, None], shifts[idx], 0).astype(jnp.int32),
        valid,
    )
    return out, count, slot_error(count, capacity, coincident)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "senders", "receivers", "shifts", "mask", "atom_mask", "reference", "cell", "error",
        "builds",
    ],
    meta_fields=["spec", "skin", "capacity"],
)
@dataclasses.dataclass(frozen=True)
class SkinList:
    """A Verlet list of N atom slots and L listed pairs (see the module documentation).

    senders, receivers (L,) int32, shifts (L, 3) int32, mask (L,) bool: the pairs within
    ``spec.cutoff`` = cutoff + skin at the last build; atom_mask (N,) real atoms; reference
    (N, 3) Å positions at the last build; cell (3, 3) Å at the last build (zeros in free space);
    error () int32 GraphError bits since allocation; builds () int32 builds since allocation.
    Static: spec (the list's bounds), skin (Å), capacity (model edge slots).
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    mask: jax.Array
    atom_mask: jax.Array
    reference: jax.Array
    cell: jax.Array
    error: jax.Array
    builds: jax.Array
    spec: NeighborSpec
    skin: float
    capacity: int

    @property
    def cutoff(self) -> float:
        """The model cutoff (Å): the list's cutoff less the skin."""
        return self.spec.cutoff - self.skin

    @property
    def periodic(self) -> bool:
        return any(self.spec.pbc)

    @property
    def did_buffer_overflow(self) -> jax.Array:
        """True once any error bit is set: the steps since then must not be kept (JAX-MD's name;
        :func:`jat.graph.error_bits` of ``error`` says whether re-allocating helps)."""
        return self.error != 0

    @property
    def overflow(self) -> jax.Array:
        """True once a static bound was exceeded (re-allocate with :func:`allocate_skin`)."""
        return (self.error & int(GROWABLE)) != 0

    def _built(self, positions, cell) -> SkinList:
        nbrs = build(positions, cell if self.periodic else None, self.atom_mask, self.spec)
        return dataclasses.replace(
            self,
            senders=nbrs.senders,
            receivers=nbrs.receivers,
            shifts=nbrs.shifts,
            mask=nbrs.mask,
            reference=positions,
            cell=cell,
            error=self.error | nbrs.error,
            builds=self.builds + 1,
        )

    def update(
        self, positions: jax.Array, cell: jax.Array | None = None, *, check_slots: bool = True
    ) -> SkinList:
        """The list for ``positions`` (N, 3) Å and ``cell`` (3, 3) (default: the last one):
        rebuilt on the device when an atom moved more than skin / 2, the cell changed, or the
        positions are not finite; the model-slot bound checked at these positions (JAX-MD's
        loop needs that; a caller that compacts the list right after, with :meth:`graph`, gets
        the same check from it and passes ``check_slots=False``). Jittable."""
        positions = jnp.asarray(positions)
        cell = self.cell if cell is None else jnp.asarray(cell, positions.dtype)
        moved = jnp.max(
            jnp.where(self.atom_mask, jnp.sum((positions - self.reference) ** 2, axis=-1), 0.0)
        )
        stale = ~(moved <= (0.5 * self.skin) ** 2) | jnp.any(cell != self.cell)
        current = jax.lax.cond(stale, lambda: self._built(positions, cell), lambda: self)
        if not check_slots:
            return current
        count, coincident = current.count_within(positions, cell)
        error = slot_error(count, self.capacity, coincident)
        return dataclasses.replace(current, error=current.error | error)

    def count_within(self, positions, cell=None) -> tuple[jax.Array, jax.Array]:
        """() listed edges now within the cutoff, and () whether two atoms coincide."""
        cell = self.cell if cell is None else cell
        within, coincident = within_cutoff(self.full_graph(positions, cell), self.cutoff)
        return jnp.sum(within, dtype=jnp.int32), coincident

    def full_graph(self, positions, cell) -> Graph:
        """Every listed pair as a graph (species unknown: all 0 on real atoms)."""
        species = jnp.where(self.atom_mask, 0, -1).astype(jnp.int32)
        return single_graph(species, positions, cell, self)

    def graph(self, species, positions, cell=None) -> tuple[Graph, jax.Array]:
        """The model graph at ``positions``: species (N,) (−1 padding), the listed edges now
        within the cutoff in ``capacity`` slots. Returns (graph, error): error has MODEL_SLOTS
        when they did not fit (never a silent drop) and COINCIDENT for atoms at one place."""
        cell = self.cell if cell is None else cell
        full = dataclasses.replace(
            self.full_graph(positions, cell), species=jnp.asarray(species, jnp.int32)
        )
        out, _, error = compact(full, self.cutoff, self.capacity)
        return out, error


def allocate_skin(
    positions,
    cutoff: float,
    cell=None,
    pbc=None,
    mask=None,
    *,
    skin: float = DEFAULT_SKIN,
    extra_slots: int = 0,
    headroom: float = EDGE_HEADROOM,
) -> SkinList:
    """Host: a skin list fitted to ``positions`` (N, 3) Å (cell (3, 3) Å or None, pbc, mask (N,)).

    The list's bounds come from :func:`jat.graph.allocate` at ``cutoff + skin`` (with
    ``headroom``), the model slots from the edges now within ``cutoff`` times
    :data:`SLOT_HEADROOM` plus ``extra_slots``, on the capacity ladder. The returned list has
    been built once; its ``error`` tells whether that build fit (see :func:`jat.graph.fit`).
    """
    skin = float(skin)
    if not (np.isfinite(skin) and skin >= 0):
        raise ValueError(f"skin must be a finite number of Å >= 0, got {skin}")
    positions = jnp.asarray(positions)
    n = positions.shape[0]
    spec = allocate(
        np.asarray(positions, np.float64), float(cutoff) + skin, cell, pbc, mask,
        headroom=headroom,
    )
    atom_mask = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
    cell_arr = jnp.zeros((3, 3), positions.dtype) if cell is None else jnp.asarray(
        cell, positions.dtype
    )
    if not any(spec.pbc):
        cell_arr = jnp.zeros((3, 3), positions.dtype)
    empty = SkinList(
        senders=jnp.zeros(0, jnp.int32),
        receivers=jnp.zeros(0, jnp.int32),
        shifts=jnp.zeros((0, 3), jnp.int32),
        mask=jnp.zeros(0, bool),
        atom_mask=atom_mask,
        reference=positions,
        cell=cell_arr,
        error=jnp.zeros((), jnp.int32),
        builds=jnp.zeros((), jnp.int32),
        spec=spec,
        skin=skin,
        capacity=0,
    )
    built = _first_build(empty, positions, cell_arr)
    count, _ = _count_within(built, positions, cell_arr)
    capacity = capacity_bucket(max(int(count), 1) * SLOT_HEADROOM + extra_slots)
    return dataclasses.replace(built, capacity=capacity)


@jax.jit
def _first_build(lst: SkinList, positions, cell) -> SkinList:
    return lst._built(positions, cell)


@jax.jit
def _count_within(lst: SkinList, positions, cell):
    return lst.count_within(positions, cell)


__all__ = [
    "DEFAULT_SKIN",
    "SLOT_HEADROOM",
    "SkinList",
    "allocate_skin",
    "compact",
    "slot_error",
    "within_cutoff",
]
