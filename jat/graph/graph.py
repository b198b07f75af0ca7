"""``Graph``: atoms and edges of one structure or of a batch of structures, padded and masked.

A batch of G structures is ONE disjoint graph: the atoms of all structures in one array, each
edge inside one structure, ``node_graph`` saying which structure an atom belongs to. Every
evaluation path of jat (``Potential.compute``, the ASE calculator, JAX-MD, the training and
evaluation steps, the benchmarks) builds a ``Graph`` and takes its edge vectors from
:meth:`Graph.edge_vectors`, the only place where the edge-vector formula is written.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jat.graph.errors import MIN_DISTANCE


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Graph:
    """N atom slots, E edge slots, G structures.

    species (N,) int32 species index, −1 for padded atoms; positions (N, 3) Å; cell (G, 3, 3) Å,
    rows are lattice vectors (zeros where a structure has none); senders j and receivers i
    (E,) int32, receivers ascending, padded edges pointing at an index ≥ the real atoms of their
    structure; shifts (E, 3) int32 integer cell shifts S; edge_mask (E,) bool; node_graph (N,)
    int32 structure of each atom (any valid index for padded atoms).

    The edge j → i has the vector r_ij = r_j − r_i + S · cell (Å), shorter than the cutoff of
    the list it came from.
    """

    species: jax.Array
    positions: jax.Array
    cell: jax.Array
    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    edge_mask: jax.Array
    node_graph: jax.Array

    @property
    def node_mask(self) -> jax.Array:
        """(N,) True for real atoms."""
        return self.species >= 0

    @property
    def n_graphs(self) -> int:
        """G, the number of structures (static)."""
        return self.cell.shape[0]

    @property
    def n_nodes(self) -> int:
        """N, the number of atom slots (static)."""
        return self.species.shape[0]

    def edge_graph(self) -> jax.Array:
        """(E,) structure of each edge (that of its receiver)."""
        return self.node_graph[jnp.clip(self.receivers, 0, self.n_nodes - 1)]

    def edge_vectors(self) -> jax.Array:
        """(E, 3) edge vectors r_j − r_i + S · cell in Å; padded edges hold finite junk."""
        positions = self.positions
        shifts = self.shifts.astype(positions.dtype)
        if self.n_graphs == 1:
            offsets = shifts @ self.cell[0]
        else:
            offsets = jnp.einsum("ek,ekl->el", shifts, self.cell[self.edge_graph()])
        return positions[self.senders] - positions[self.receivers] + offsets

    def deformed(self, strain: jax.Array) -> Graph:
        """The graph under the homogeneous deformation x → x (1 + ε), ε = sym(strain) per
        structure (strain (G, 3, 3)): positions and cells move together, so edge vectors are
        deformed alike. At strain 0 the derivative of an energy with respect to ``strain`` is
        the virial ∂E/∂ε (eV)."""
        sym = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
        return self.transformed(jnp.eye(3, dtype=self.positions.dtype) + sym)

    def transformed(self, matrix: jax.Array) -> Graph:
        """The graph under the linear map x → x M of each structure (matrix (G, 3, 3)):
        positions and cell rows map alike, so every edge vector v becomes v M."""
        matrix = jnp.asarray(matrix, self.positions.dtype)
        if self.n_graphs == 1:
            positions = self.positions @ matrix[0]
        else:
            positions = jnp.einsum("ni,nij->nj", self.positions, matrix[self.node_graph])
        return dataclasses.replace(self, positions=positions, cell=self.cell @ matrix)

    def with_edges(self, senders, receivers, shifts, edge_mask) -> Graph:
        """The same atoms with another edge list."""
        return dataclasses.replace(
            self, senders=senders, receivers=receivers, shifts=shifts, edge_mask=edge_mask
        )

    def coincident(self, vectors: jax.Array | None = None) -> jax.Array:
        """() bool: some real edge is shorter than :data:`MIN_DISTANCE` (atoms at the same
        position). ``vectors``: the edge vectors if already computed."""
        v = jax.lax.stop_gradient(self.edge_vectors() if vectors is None else vectors)
        return jnp.any(self.edge_mask & (jnp.sum(v * v, axis=-1) < MIN_DISTANCE**2))


def single_graph(species, positions, cell, neighbors) -> Graph:
    """The graph of one structure: species (N,), positions (N, 3), cell (3, 3) (zeros in free
    space) and an edge list of it (anything with ``senders``, ``receivers``, ``shifts`` and
    ``mask``: :class:`jat.graph.Neighbors`, :class:`jat.graph.SkinList`)."""
    xp = np if isinstance(positions, np.ndarray) else jnp  # numpy stays numpy (host checks)
    return Graph(
        species=xp.asarray(species, xp.int32),
        positions=positions,
        cell=xp.asarray(cell, positions.dtype)[None],
        senders=neighbors.senders,
        receivers=neighbors.receivers,
        shifts=neighbors.shifts,
        edge_mask=neighbors.mask,
        node_graph=xp.zeros(positions.shape[0], xp.int32),
    )


def batch_graph(species, positions, cell, senders, receivers, shifts, edge_mask) -> Graph:
    """One disjoint graph of B structures padded alike.

    species (B, n), positions (B, n, 3), cell (B, 3, 3), and per-structure edge lists (B, E)
    with indices in 0…n (padding = n). Edge indices are offset by b·n, so receivers stay
    ascending over the whole batch (padded edges of structure b point at (b + 1)·n, masked).
    """
    b, n = species.shape
    offset = (jnp.arange(b, dtype=jnp.int32) * n)[:, None]
    return Graph(
        species=species.reshape(-1),
        positions=positions.reshape(-1, 3),
        cell=cell,
        senders=(senders + offset).reshape(-1),
        receivers=(receivers + offset).reshape(-1),
        shifts=shifts.reshape(-1, 3),
        edge_mask=edge_mask.reshape(-1),
        node_graph=jnp.repeat(jnp.arange(b, dtype=jnp.int32), n),
    )


def coincident_pairs(graph: Graph) -> list[tuple[int, int, float]]:
    """Host, for error messages: (sender, receiver, distance Å) of the real edges shorter than
    :data:`MIN_DISTANCE`, each pair once (sender ≤ receiver)."""
    host = jax.tree.map(lambda x: np.asarray(x), graph)
    padded = dataclasses.replace(  # one more atom slot: padded edges index it in numpy
        host,
        positions=np.concatenate([host.positions.astype(np.float64), np.zeros((1, 3))]),
        cell=host.cell.astype(np.float64),
        node_graph=np.concatenate([host.node_graph, [0]]),
        species=np.concatenate([host.species, [-1]]),
    )
    vectors = np.asarray(padded.edge_vectors(), np.float64)
    d = np.linalg.norm(vectors, axis=-1)
    mask = np.asarray(graph.edge_mask) & (d < MIN_DISTANCE)
    senders, receivers = np.asarray(graph.senders)[mask], np.asarray(graph.receivers)[mask]
    pairs = {
        (int(min(s, r)), int(max(s, r))): float(x)
        for s, r, x in zip(senders, receivers, d[mask], strict=True)
    }
    return [(i, j, x) for (i, j), x in sorted(pairs.items())]


__all__ = ["Graph", "batch_graph", "coincident_pairs", "single_graph"]
