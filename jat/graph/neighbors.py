"""Neighbour lists with static shapes: host-side allocation, jittable build, overflow recovery.

Semantics follow ``ase.neighborlist.neighbor_list("ijS", atoms, cutoff)`` with ``i`` the
receiver and ``j`` the sender: the edge vector is
``positions[senders] - positions[receivers] + shifts @ cell`` and shorter than the cutoff.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jat.graph import all_pairs, cell_list
from jat.graph._common import REACH_EPS, heights, inverse, offsets, search_basis

# "auto" uses all pairs up to this many candidate pairs (atom slots^2 x images); measured on
# 2 CPU cores at liquid density, the cell list wins above (about 200 atoms in a periodic box,
# about 1000 without periodicity).
AUTO_ALL_PAIRS_CANDIDATES = 2**20
BIN_MARGIN = 1e-4  # periodic bins are at least (1 + BIN_MARGIN) * cutoff high
MAX_GROW_STEPS = 8
EDGE_HEADROOM = 1.1  # default spare edge capacity over the count at allocation
BIN_HEADROOM = 1.25  # spare atom slots per bin (cell list) over the fullest bin
CAPACITY_LADDER = 1.05


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Neighbors:
    """Edge list of static length E; valid edges first, sorted by receiver.

    senders (E,) int32 j, receivers (E,) int32 i, shifts (E, 3) int32 cell shift S, mask (E,)
    bool, n_edges () int32 number of edges found (may exceed E), overflow () bool set when any
    static bound of the spec was exceeded (the list is then incomplete). Padded edges have
    ``senders = receivers = N``, ``shifts = 0`` and ``mask = False``.
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    mask: jax.Array
    n_edges: jax.Array
    overflow: jax.Array


@dataclasses.dataclass(frozen=True)
class NeighborSpec:
    """Static (hashable) parameters of :func:`build`.

    cutoff (Å); capacity E (edges); method ``"all_pairs"`` or ``"cell_list"``; pbc per axis;
    n_bins bins per axis (all ones for all pairs); reach bins (all pairs: images) scanned on
    each side per axis; bin_capacity atom slots per bin (cell list, a multiple of 32).
    """

    cutoff: float
    capacity: int
    method: str
    pbc: tuple[bool, bool, bool]
    n_bins: tuple[int, int, int] = (1, 1, 1)
    reach: tuple[int, int, int] = (0, 0, 0)
    bin_capacity: int = 32


def _normalize_pbc(pbc, has_cell: bool) -> tuple[bool, bool, bool]:
    if pbc is None:
        return (has_cell,) * 3
    flags = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    return tuple(bool(p) for p in flags)


def _bucket(n: float, quantum: int = 64) -> int:
    """Round ``n`` up to a geometric ladder (ratio ``CAPACITY_LADDER``) of multiples of ``quantum``.

    Every padded edge costs as much model time as a real one, so the ladder is fine: capacities
    land within [1, CAPACITY_LADDER] of the request, and a spec is reused while the edge count
    drifts inside its rung.
    """
    if n <= quantum:
        return quantum
    step = math.ceil(math.log(n / quantum) / math.log(CAPACITY_LADDER) - 1e-9)
    return int(math.ceil(quantum * CAPACITY_LADDER**step / quantum) * quantum)


def _validate(positions, cutoff, cell, pbc, mask):
    """Host-side checks; returns float64 positions (B, N, 3), cell (B, 3, 3), mask (B, N)."""
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive finite number of Å, got {cutoff}")
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim not in (2, 3) or pos.shape[-1] != 3:
        raise ValueError(f"positions must have shape (N, 3) or (B, N, 3), got {pos.shape}")
    pos = pos if pos.ndim == 3 else pos[None]
    n_batch, n_atoms = pos.shape[:2]
    m = np.ones(n_atoms, bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape not in ((n_atoms,), (n_batch, n_atoms)):
        raise ValueError(f"mask must have shape {pos.shape[:-1]}, got {m.shape}")
    m = np.broadcast_to(m, (n_batch, n_atoms))
    if not np.all(np.isfinite(pos[m])):
        raise ValueError("positions contain NaN or inf")
    if cell is None:
        if any(pbc):
            raise ValueError(f"pbc={pbc} needs a cell")
        c = np.zeros((n_batch, 3, 3))
    else:
        c = np.asarray(cell, dtype=np.float64)
        if c.shape not in ((3, 3), (n_batch, 3, 3)):
            raise ValueError(f"cell must have shape (3, 3) or ({n_batch}, 3, 3), got {c.shape}")
        c = np.broadcast_to(c, (n_batch, 3, 3))
        if not np.all(np.isfinite(c)):
            raise ValueError("cell contains NaN or inf")
    periodic = [k for k in range(3) if pbc[k]]
    for b in range(n_batch):
        if periodic and np.linalg.matrix_rank(c[b][periodic], tol=1e-8) < len(periodic):
            raise ValueError(f"cell is singular along the periodic axes {periodic}")
    return pos, c, m


def allocate(
    positions,
    cutoff: float,
    cell=None,
    pbc=None,
    mask=None,
    *,
    method: str = "auto",
    capacity: int | None = None,
    headroom: float = EDGE_HEADROOM,
) -> NeighborSpec:
    """Host-side (not jittable): a spec whose static bounds fit the given geometry.

    positions (N, 3) or (B, N, 3) Å, cell None, (3, 3) or (B, 3, 3) Å (rows are lattice
    vectors), pbc None / bool / 3 bools, mask (N,) or (B, N) bool. The spec is valid for every
    structure of a batch. Edge capacity gets ``headroom`` (bins get ``BIN_HEADROOM``); capacity is
    rounded up to a bucket so that small fluctuations do not change the spec. ``"auto"``
    picks all pairs while (atom slots rounded to 32)^2 x periodic images <= 2^20, else the
    cell list. Raises ValueError on invalid input.
    """
    pbc = _normalize_pbc(pbc, cell is not None)
    pos, cells, masks = _validate(positions, cutoff, cell, pbc, mask)
    geometry = [_geometry(p, c, pbc)[1:] for p, c in zip(pos, cells, strict=True)]
    if method == "auto":
        images = math.prod(2 * r + 1 for r in _reach(cutoff, geometry, pbc))
        slots = -(-pos.shape[1] // 32) * 32
        method = "all_pairs" if slots**2 * images <= AUTO_ALL_PAIRS_CANDIDATES else "cell_list"
    if method not in ("all_pairs", "cell_list"):
        raise ValueError(f"unknown method {method!r}: use 'auto', 'all_pairs' or 'cell_list'")
    if headroom < 1:
        raise ValueError(f"headroom must be >= 1, got {headroom}")
    if method == "all_pairs":
        spec = NeighborSpec(float(cutoff), 0, method, pbc, reach=_reach(cutoff, geometry, pbc))
    else:
        spec = _cell_list_spec(float(cutoff), pbc, pos, masks, geometry, BIN_HEADROOM)
    if capacity is None:
        capacity = _bucket(_count(pos, cells, masks, spec) * headroom)
    return dataclasses.replace(spec, capacity=int(capacity))


def _geometry(positions, cell, pbc):
    """Host version of ``fractional``: wrapped positions (N, 3) Å, their fractional
    coordinates (N, 3) in the search basis and its heights (3,) Å."""
    basis = search_basis(cell, pbc, np)
    frac = positions @ inverse(basis, np)
    image = np.where(pbc, np.floor(frac), 0.0)
    return positions - image @ cell, frac - image, heights(basis, np)


def _reach(cutoff: float, geometry, pbc, n_bins=(1, 1, 1)) -> tuple[int, int, int]:
    """Bins (images for a single bin) needed on each side of every axis, over a batch."""
    reach = []
    for k in range(3):
        if pbc[k]:
            ratio = max(cutoff * n_bins[k] / h[k] for _, h in geometry)
            reach.append(math.ceil(ratio * (1 + REACH_EPS)))
        else:
            reach.append(min(1, n_bins[k] - 1))
    return tuple(reach)


def _cell_list_spec(cutoff, pbc, pos, masks, geometry, headroom) -> NeighborSpec:
    n_bins = []
    for k in range(3):
        if pbc[k]:
            size = min(h[k] for _, h in geometry)
        else:  # extent of the atoms perpendicular to the free axis
            size = max(
                (np.ptp(f[m, k]) * h[k] if m.any() else 0.0)
                for (f, h), m in zip(geometry, masks, strict=True)
            )
        n_bins.append(max(1, int(size / (cutoff * (1 + BIN_MARGIN)))))
    while math.prod(n_bins) > max(1, pos.shape[1]):  # keep about one atom per bin or more
        n_bins[int(np.argmax(n_bins))] -= 1
    n_bins = tuple(n_bins)
    occupancy = 1
    for (f, h), m in zip(geometry, masks, strict=True):
        b = cell_list.bin_coordinates(f, h, m, cutoff, pbc, n_bins)[m]
        flat = (b[:, 0] * n_bins[1] + b[:, 1]) * n_bins[2] + b[:, 2]
        occupancy = max(occupancy, int(np.bincount(flat).max(initial=0)))
    return NeighborSpec(
        cutoff,
        0,
        "cell_list",
        pbc,
        n_bins=n_bins,
        reach=_reach(cutoff, geometry, pbc, n_bins),
        bin_capacity=32 * math.ceil(occupancy * headroom / 32),
    )


def _count(pos, cells, masks, spec) -> int:
    """Largest number of edges over a batch, counted on the host in float64 bin by bin."""
    grid = np.asarray(spec.n_bins)
    n_total = math.prod(spec.n_bins)
    periodic = np.asarray(spec.pbc)
    all_bins = np.stack(np.unravel_index(np.arange(n_total), spec.n_bins), axis=-1)
    most = 0
    for positions, cell, mask in zip(pos, cells, masks, strict=True):
        wrapped, frac, height = _geometry(positions, cell, spec.pbc)
        atom_bin = cell_list.bin_coordinates(frac, height, mask, spec.cutoff, spec.pbc, spec.n_bins)
        flat = np.ravel_multi_index(atom_bin[mask].T, spec.n_bins)
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=n_total)
        slot = np.arange(len(order)) - (np.cumsum(counts) - counts)[flat[order]]
        binned = np.full((n_total + 1, max(1, counts.max(initial=0)), 3), np.inf)
        binned[flat[order], slot] = wrapped[mask][order]
        total = 0
        for offset in offsets(spec.reach):
            target = all_bins + offset
            shift = np.where(periodic, target // grid, 0)
            target = np.where(periodic, target % grid, target)
            inside = np.all((target >= 0) & (target < grid), axis=-1)
            neighbor = np.where(
                inside, np.ravel_multi_index(target.T, spec.n_bins, mode="clip"), n_total
            )
            other = binned[neighbor] + (shift @ cell)[:, None, :]
            with np.errstate(invalid="ignore"):
                d2 = np.sum((binned[:n_total, :, None] - other[:, None]) ** 2, axis=-1)
            total += np.count_nonzero(d2 < spec.cutoff**2)
            if not offset.any():  # an atom and itself at zero shift
                total -= np.count_nonzero(mask)
        most = max(most, total)
    return most


def build(positions: jax.Array, cell: jax.Array | None, mask: jax.Array | None, spec) -> Neighbors:
    """Jittable neighbour list (``spec`` static); vmappable over positions, cell and mask.

    positions (N, 3) Å (float32 or float64), cell (3, 3) Å or None when no axis is periodic,
    mask (N,) bool or None. Never raises on the data: exceeded bounds set ``overflow``.
    """
    positions = jax.lax.stop_gradient(jnp.asarray(positions))
    if not jnp.issubdtype(positions.dtype, jnp.floating):
        positions = positions.astype(jnp.result_type(float))
    n = positions.shape[0]
    if cell is None:
        if any(spec.pbc):
            raise ValueError(f"pbc={spec.pbc} needs a cell")
        cell = jnp.zeros((3, 3), positions.dtype)
    cell = jax.lax.stop_gradient(jnp.asarray(cell, positions.dtype))
    mask = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
    if n == 0:
        pad = jnp.zeros(spec.capacity, jnp.int32)
        zero = jnp.zeros((), jnp.int32)
        shifts = jnp.zeros((spec.capacity, 3), jnp.int32)
        return Neighbors(pad, pad, shifts, pad.astype(bool), zero, zero.astype(bool))
    args = (positions, cell, mask, spec.cutoff, spec.pbc)
    if spec.method == "all_pairs":
        out = all_pairs.edges(*args, spec.reach, spec.capacity)
    elif spec.method == "cell_list":
        out = cell_list.edges(*args, spec.n_bins, spec.reach, spec.bin_capacity, spec.capacity)
    else:
        raise ValueError(f"unknown method {spec.method!r}")
    return Neighbors(*out)


_build_jit = jax.jit(build, static_argnums=3)


def grow(
    spec: NeighborSpec, neighbors: Neighbors, headroom: float = EDGE_HEADROOM
) -> NeighborSpec:
    """Host-side: a larger spec after ``neighbors`` (possibly batched) overflowed.

    If more edges were found than fit, the capacity grows to hold them; otherwise a per-bin or
    image bound was exceeded, and bin capacity and reach on periodic axes grow by one step.
    For an exact re-fit to a new geometry call :func:`allocate` instead.
    """
    if not np.any(np.asarray(neighbors.overflow)):
        return spec
    n_edges = int(np.max(np.asarray(neighbors.n_edges)))
    if n_edges > spec.capacity:
        return dataclasses.replace(spec, capacity=_bucket(n_edges * headroom))
    reach = tuple(r + 1 if p else r for r, p in zip(spec.reach, spec.pbc, strict=True))
    bin_capacity = spec.bin_capacity + 32 if spec.method == "cell_list" else spec.bin_capacity
    return dataclasses.replace(spec, reach=reach, bin_capacity=bin_capacity)


def neighbor_list(
    positions,
    cutoff: float,
    cell=None,
    pbc=None,
    mask=None,
    *,
    method: str = "auto",
    capacity: int | None = None,
) -> Neighbors:
    """Host convenience: allocate, build (jitted, cached per spec) and grow until complete.

    positions (N, 3) Å, cell None or (3, 3) Å, pbc None / bool / 3 bools, mask (N,) bool.
    """
    spec = allocate(positions, cutoff, cell, pbc, mask, method=method, capacity=capacity)
    cell = None if not any(spec.pbc) else jnp.asarray(cell)
    positions = jnp.asarray(positions)
    for _ in range(MAX_GROW_STEPS):
        neighbors = _build_jit(positions, cell, mask, spec)
        if not bool(neighbors.overflow):
            return neighbors
        spec = grow(spec, neighbors)
    raise RuntimeError(f"neighbour list still overflows after {MAX_GROW_STEPS} grow steps")


__all__ = ["Neighbors", "NeighborSpec", "allocate", "build", "grow", "neighbor_list"]
