"""All-pairs strategy: every atom against every atom in every periodic image, O(N^2 K)."""

from __future__ import annotations

import jax.numpy as jnp

from jat.graph._common import error_code, find_edges, fractional, reach_overflow


def edges(
    positions: jnp.ndarray,
    cell: jnp.ndarray,
    mask: jnp.ndarray,
    cutoff: float,
    pbc: tuple[bool, bool, bool],
    reach: tuple[int, int, int],
    capacity: int,
):
    """Edges of N >= 1 atoms; ``reach`` is the number of images searched on each side per axis.

    positions (N, 3) Å, cell (3, 3) Å, mask (N,) bool. Returns ``senders, receivers, shifts,
    edge_mask, n_edges, error`` as in :class:`jat.graph.Neighbors`.
    """
    n = positions.shape[0]
    wrapped, _, image, height = fractional(positions, cell, pbc)
    slots = -(-n // 32) * 32
    atoms = jnp.where(mask, jnp.arange(n, dtype=jnp.int32), n)
    table = jnp.full((2, slots), n, jnp.int32).at[0, :n].set(atoms)
    out = find_edges(
        wrapped,
        image,
        cell,
        cutoff,
        pbc,
        (1, 1, 1),
        reach,
        jnp.zeros(n, jnp.int32),
        table,
        jnp.arange(n, dtype=jnp.int32),
        mask,
        capacity,
    )
    *edges, coincident = out
    reach_exceeded = reach_overflow(cutoff, height, (1, 1, 1), reach, pbc)
    error = error_code(
        edges[-1], capacity, reach_exceeded, coincident, positions, mask, height, pbc
    )
    return (*edges, error)
