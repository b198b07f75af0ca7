"""Cell-list strategy: atoms sorted into bins of about the cutoff, O(N) candidate pairs.

Periodic axes are split into ``n_bins`` slabs of the (wrapped) cell and scanned ``reach`` bins
to each side with image shifts, which also covers cells smaller than the cutoff. Free axes use
``n_bins`` bins spanning the atoms' current extent, each at least one cutoff wide, so atoms can
never leave the grid; only the number of atoms per bin is bounded (``bin_capacity``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jat.graph._common import (
    REACH_EPS,
    cumsum,
    error_code,
    find_edges,
    fractional,
    reach_overflow,
)


def bin_coordinates(frac, height, mask, cutoff: float, pbc, n_bins):
    """(N, 3) int32 bin of every atom from its fractional coordinates (wrapped on periodic
    axes); works with ``numpy`` or ``jax.numpy`` arrays."""
    xp = np if isinstance(frac, np.ndarray) else jnp
    grid = np.asarray(n_bins)
    big = xp.where(mask[:, None], frac, np.inf)
    lo = xp.min(big, axis=0, initial=np.inf)
    hi = xp.max(xp.where(mask[:, None], frac, -np.inf), axis=0, initial=-np.inf)
    lo = xp.where(xp.isfinite(lo), lo, 0.0)
    width = xp.maximum(xp.maximum(hi - lo, 0.0) / grid, cutoff / height * (1 + REACH_EPS))
    coord = xp.where(np.asarray(pbc), frac * grid, (frac - lo) / width)
    coord = xp.where(mask[:, None], coord, 0.0)
    return xp.clip(xp.floor(coord), 0, grid - 1).astype(xp.int32)


def edges(
    positions: jnp.ndarray,
    cell: jnp.ndarray,
    mask: jnp.ndarray,
    cutoff: float,
    pbc: tuple[bool, bool, bool],
    n_bins: tuple[int, int, int],
    reach: tuple[int, int, int],
    bin_capacity: int,
    capacity: int,
):
    """Edges of N >= 1 atoms binned on an ``n_bins`` grid with ``bin_capacity`` slots per bin.

    positions (N, 3) Å, cell (3, 3) Å, mask (N,) bool. Returns ``senders, receivers, shifts,
    edge_mask, n_edges, error`` as in :class:`jat.graph.Neighbors`.
    """
    n = positions.shape[0]
    n_total = int(np.prod(n_bins))
    wrapped, frac, image, height = fractional(positions, cell, pbc)
    atom_bin = bin_coordinates(frac, height, mask, cutoff, pbc, n_bins)
    flat = (atom_bin[:, 0] * n_bins[1] + atom_bin[:, 1]) * n_bins[2] + atom_bin[:, 2]
    flat = jnp.where(mask, flat, n_total + 1)  # padded atoms sort last and are never stored

    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    sorted_bin = flat[order]
    counts = jnp.zeros(n_total + 2, jnp.int32).at[flat].add(1)
    starts = cumsum(counts) - counts
    sorted_slot = jnp.arange(n, dtype=jnp.int32) - starts[sorted_bin]
    slot = jnp.zeros(n, jnp.int32).at[order].set(sorted_slot)
    table = (
        jnp.full((n_total + 1, bin_capacity), n, jnp.int32)
        .at[sorted_bin, sorted_slot]
        .set(order, mode="drop")
    )
    out = find_edges(
        wrapped, image, cell, cutoff, pbc, n_bins, reach, flat, table, slot, mask, capacity
    )
    *edges, coincident = out
    error = error_code(
        edges[-1],
        capacity,
        reach_overflow(cutoff, height, n_bins, reach, pbc),
        coincident,
        positions,
        mask,
        height,
        pbc,
        bins=jnp.max(counts[:n_total]) > bin_capacity,
    )
    return (*edges, error)
