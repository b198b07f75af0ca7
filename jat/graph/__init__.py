"""Graphs of atoms for jitted interatomic potentials: padded, masked, any cell.

- :class:`Graph`: atoms and edges of a structure or a batch (one disjoint graph), with the one
  edge-vector formula (:meth:`Graph.edge_vectors`).
- :func:`allocate` (host) / :func:`build` (jittable): neighbour lists with static bounds, all
  pairs or a cell list, for free space and any periodic cell, bit-coded errors instead of
  exceptions (:class:`GraphError`), :func:`grow` and :func:`fit` to re-allocate.
- :class:`SkinList`: the jittable Verlet list used by the ASE calculator and JAX-MD.
"""

from jat.graph.errors import (
    MIN_DISTANCE,
    CapacityError,
    GraphError,
    describe,
    error_bits,
)
from jat.graph.graph import Graph, batch_graph, coincident_pairs, single_graph
from jat.graph.neighbors import (
    Neighbors,
    NeighborSpec,
    allocate,
    build,
    grow,
    neighbor_list,
)
from jat.graph.retry import fit
from jat.graph.skin import DEFAULT_SKIN, SkinList, allocate_skin, compact, within_cutoff

__all__ = [
    "DEFAULT_SKIN",
    "MIN_DISTANCE",
    "SkinList",
    "allocate_skin",
    "compact",
    "CapacityError",
    "Graph",
    "GraphError",
    "NeighborSpec",
    "Neighbors",
    "allocate",
    "batch_graph",
    "build",
    "coincident_pairs",
    "describe",
    "error_bits",
    "fit",
    "grow",
    "neighbor_list",
    "single_graph",
    "within_cutoff",
]
