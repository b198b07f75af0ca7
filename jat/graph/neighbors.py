"""Neighbour lists with static shapes: host-side allocation, jittable build, overflow recovery.

Semantics follow ``ase.neighborlist.neighbor_list("ijS", atoms, cutoff)`` with ``i`` the
receiver and ``j`` the sender: every edge j → i with a cell shift S is shorter than the cutoff,
its vector as :meth:`jat.graph.Graph.edge_vectors` computes it. A build never raises on the data:
it returns a bit-coded error (:class:`jat.graph.GraphError`), from which the host grows the bound
that was too small (:func:`grow`, :func:`jat.graph.fit`) or reports an invalid structure.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jat.graph import all_pairs, cell_list
from jat.graph._common import REACH_EPS, heights, inverse, offsets, search_basis
from jat.graph.errors import GROWABLE, CapacityError, GraphError, describe, error_bits
from jat.graph.geometry import check_cell, normalize_pbc
from jat.graph.retry import MAX_ATTEMPTS, fit

# "auto" uses all pairs up to this many candidate pairs (atom slots^2 x images); measured on
# 2 CPU cores at liquid density, the cell list wins above (about 200 atoms in a periodic box,
# about 1000 without periodicity).
AUTO_ALL_PAIRS_CANDIDATES = 2**20
BIN_MARGIN = 1e-4  # periodic bins are at least (1 + BIN_MARGIN) * cutoff high
MAX_GROW_STEPS = MAX_ATTEMPTS
# The search kernel holds a distance block of (bins x slots x offsets x slots) values; above this
# many it would need tens of GB. A cell much smaller than the cutoff (thousands of periodic
# images) is refused instead of exhausting memory.
MAX_SEARCH_ELEMENTS = 2**30
EDGE_HEADROOM = 1.1  # default spare edge capacity over the count at allocation
BIN_HEADROOM = 1.25  # spare atom slots per bin (cell list) over the fullest bin
CAPACITY_LADDER = 1.05


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Neighbors:
    """Edge list of static length E; valid edges first, sorted by receiver.

    senders (E,) int32 j, receivers (E,) int32 i, shifts (E, 3) int32 cell shift S, mask (E,)
    bool, n_edges () int32 number of edges found (may exceed E), error () int32
    :class:`jat.graph.GraphError` bits (a static bound exceeded: the list is then incomplete;
    coincident atoms; invalid input). Padded edges have ``senders = receivers = N``,
    ``shifts = 0`` and ``mask = False``.
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    mask: jax.Array
    n_edges: jax.Array
    error: jax.Array

    @property
    def overflow(self) -> jax.Array:
        """True where a static bound was exceeded (a growable error bit is set)."""
        return (self.error & int(GROWABLE)) != 0


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


def capacity_bucket(n: float, quantum: int = 64) -> int:
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
        c = np.broadcast_to(check_cell(None, pbc), (n_batch, 3, 3))
    else:
        c = np.asarray(cell, dtype=np.float64)
        if c.shape not in ((3, 3), (n_batch, 3, 3)):
            raise ValueError(f"cell must have shape (3, 3) or ({n_batch}, 3, 3), got {c.shape}")
        c = np.stack([check_cell(x, pbc) for x in np.broadcast_to(c, (n_batch, 3, 3))])
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
    estimate: bool = False,
) -> NeighborSpec:
    """Host-side (not jittable): a spec whose static bounds fit the given geometry.

    positions (N, 3) or (B, N, 3) Å, cell None, (3, 3) or (B, 3, 3) Å (rows are lattice
    vectors), pbc None / bool / 3 bools, mask (N,) or (B, N) bool. The spec is valid for every
    structure of a batch. Edge capacity gets ``headroom`` (bins get ``BIN_HEADROOM``); capacity is
    rounded up to a bucket so that small fluctuations do not change the spec. ``"auto"``
    picks all pairs while (atom slots rounded to 32)^2 x periodic images <= 2^20, else the
    cell list. Raises ValueError on invalid input.

    ``estimate``: size the edge capacity from the number density instead of counting the edges
    on the host (which costs several times a build for thousands of atoms); the estimate errs
    on the high side (up to about 2x for chains and sheets) and a lower count is grown from
    the build's ``n_edges`` (:func:`grow`), as :func:`neighbor_list` does.
    """
    pbc = normalize_pbc(pbc, cell is not None)
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
    periodic_heights = [float(h[k]) for _, h in geometry for k in range(3) if pbc[k]]
    check_search_size(spec, pos.shape[1], min(periodic_heights, default=None))
    if capacity is None:
        if estimate:
            count = _estimate(cells, masks, geometry, spec)
        else:
            count = _count(pos, cells, masks, spec)
        capacity = capacity_bucket(count * headroom)
    return dataclasses.replace(spec, capacity=int(capacity))


def search_elements(spec: NeighborSpec, n_atoms: int) -> int:
    """Number of candidate distances the build's kernel holds at once for ``spec``."""
    n_off = math.prod(2 * r + 1 for r in spec.reach)
    if spec.method == "all_pairs":
        slots = -(-max(n_atoms, 1) // 32) * 32
        return slots * slots * n_off
    return math.prod(spec.n_bins) * spec.bin_capacity**2 * n_off


def check_search_size(spec: NeighborSpec, n_atoms: int, height: float | None = None) -> None:
    """Raise :class:`jat.graph.CapacityError` (a clear message, before any memory is taken) when
    the search for ``spec`` would hold more than :data:`MAX_SEARCH_ELEMENTS` distances, as a
    cell far smaller than the cutoff needs (thousands of periodic images)."""
    size = search_elements(spec, n_atoms)
    if size <= MAX_SEARCH_ELEMENTS:
        return
    images = math.prod(2 * r + 1 for r, p in zip(spec.reach, spec.pbc, strict=True) if p)
    where = f" (smallest cell height {height:.4g} Å)" if height is not None else ""
    raise CapacityError(
        f"refusing a neighbour search over {images:.3g} periodic images{where} with cutoff "
        f"{spec.cutoff:g} Å: it would hold {size:.3g} candidate distances "
        f"(~{4 * size / 2**30:.3g} GiB, bound {MAX_SEARCH_ELEMENTS:.3g}); the cell is far "
        "smaller than the cutoff: check its units and size"
    )


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


def _estimate(cells, masks, geometry, spec) -> int:
    """Expected number of edges, the largest over a batch: each of n atoms has about
    ρ (4/3)π r_c³ neighbours at number density ρ = n / V, where V is the cell's volume along
    periodic axes and the atoms' extent (at least r_c) along free ones; without periodic axes
    at most n − 1."""
    sphere = 4.0 / 3.0 * math.pi * spec.cutoff**3
    most = 0.0
    for cell, (frac, height), mask in zip(cells, geometry, masks, strict=True):
        n = int(np.count_nonzero(mask))
        if n == 0:
            continue
        if all(spec.pbc):
            per_atom = n / abs(float(np.linalg.det(cell))) * sphere
            most = max(most, n * per_atom)
            continue
        sides = [
            float(height[k]) if spec.pbc[k]
            else max(float(np.ptp(frac[mask, k])) * float(height[k]), spec.cutoff)
            for k in range(3)
        ]
        per_atom = n / math.prod(sides) * sphere
        if not any(spec.pbc):
            per_atom = min(per_atom, n - 1)
        most = max(most, n * per_atom)
    return int(math.ceil(most))


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
    mask (N,) bool or None. Never raises on the data: problems set bits of ``error``.
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
        return Neighbors(pad, pad, shifts, pad.astype(bool), zero, zero)
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
    spec: NeighborSpec,
    neighbors: Neighbors,
    headroom: float = EDGE_HEADROOM,
    n_atoms: int | None = None,
) -> NeighborSpec:
    """Host-side: a larger spec after ``neighbors`` (possibly batched) reported an overflow.

    Each growable bit of the error code grows its own bound: the edge capacity to hold every
    edge found, the bin capacity by 32 slots, the reach on periodic axes by one bin. Raises
    :class:`jat.graph.CapacityError` when the search would grow beyond its memory bound
    (``n_atoms``, the atom slots, is needed for that check with all pairs). For an exact re-fit
    to a new geometry call :func:`allocate` instead.
    """
    code = error_bits(neighbors.error)
    if not code & int(GROWABLE):
        return spec
    changes = {}
    if code & GraphError.EDGES:
        n_edges = int(np.max(np.asarray(neighbors.n_edges)))
        changes["capacity"] = capacity_bucket(max(n_edges, spec.capacity + 1) * headroom)
    if code & GraphError.BIN_OCCUPANCY and spec.method == "cell_list":
        changes["bin_capacity"] = spec.bin_capacity + 32
    if code & GraphError.IMAGES:
        pairs = zip(spec.reach, spec.pbc, strict=True)
        changes["reach"] = tuple(r + 1 if p else r for r, p in pairs)
    grown = dataclasses.replace(spec, **changes)
    if n_atoms is not None or grown.method == "cell_list":
        check_search_size(grown, n_atoms or 0)
    return grown


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
    Raises ValueError for coincident atoms or an invalid structure.
    """
    spec = allocate(
        positions, cutoff, cell, pbc, mask, method=method, capacity=capacity, estimate=True
    )
    cell = None if not any(spec.pbc) else jnp.asarray(cell)
    positions = jnp.asarray(positions)
    neighbors, _ = fit(
        lambda s: _build_jit(positions, cell, mask, s),
        spec,
        lambda s, nb, _: grow(s, nb, n_atoms=positions.shape[0]),
        error=lambda nb: nb.error,
        what="neighbour list",
    )
    code = error_bits(neighbors.error)
    if code & ~int(GROWABLE):
        raise ValueError(f"invalid structure for a neighbour list: {describe(code)}")
    return neighbors


__all__ = [
    "MAX_SEARCH_ELEMENTS",
    "Neighbors",
    "NeighborSpec",
    "allocate",
    "build",
    "capacity_bucket",
    "check_search_size",
    "grow",
    "neighbor_list",
    "search_elements",
]
