"""Cell geometry and bit-packed edge search shared by the neighbour-list strategies.

Both strategies reduce to the same kernel: atoms live in a grid of bins (a single bin for
all pairs), every receiver scans the bins within ``reach`` of its own bin (periodic axes wrap
and add an image shift), hits are packed into 32-bit words, and the words are compacted into a
receiver-sorted edge list of static length by a prefix sum over the word popcounts.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from jax import lax

from jat.graph.errors import MIN_DISTANCE, GraphError, combine, flag

REACH_EPS = 1e-6  # relative margin when turning a height ratio into a number of bins/images


def search_basis(cell, pbc: tuple[bool, bool, bool], xp=jnp):
    """(3, 3) basis for fractional coordinates: periodic rows are the lattice vectors of ``cell``,
    free rows an orthonormal completion perpendicular to them (identity if nothing is periodic).
    ``xp`` is ``numpy`` on the host and ``jax.numpy`` inside jit."""
    periodic = [k for k in range(3) if pbc[k]]
    free = [k for k in range(3) if not pbc[k]]
    if not periodic:
        return xp.eye(3, dtype=cell.dtype)
    rows = [None] * 3
    for k in periodic:
        rows[k] = cell[k]
    if len(free) == 1:
        normal = xp.cross(cell[periodic[0]], cell[periodic[1]])
        rows[free[0]] = normal / xp.linalg.norm(normal)
    elif len(free) == 2:
        axis = cell[periodic[0]] / xp.linalg.norm(cell[periodic[0]])
        other = xp.eye(3, dtype=cell.dtype)[xp.argmin(xp.abs(axis))]
        u = xp.cross(axis, other)
        u = u / xp.linalg.norm(u)
        rows[free[0]] = u
        rows[free[1]] = xp.cross(axis, u)
    return xp.stack(rows)


def _dual(basis, xp):
    """Rows ``basis[k+1] x basis[k+2]`` and the determinant of a (3, 3) basis."""
    dual = xp.stack([xp.cross(basis[(k + 1) % 3], basis[(k + 2) % 3]) for k in range(3)])
    return dual, xp.sum(basis[0] * dual[0])


def inverse(basis, xp=jnp):
    """Inverse of a (3, 3) matrix (closed form, no LAPACK call)."""
    dual, det = _dual(basis, xp)
    return dual.T / det


def heights(basis, xp=jnp):
    """(3,) distances (Å) between opposite faces of the parallelepiped spanned by ``basis``."""
    dual, det = _dual(basis, xp)
    return xp.abs(det) / xp.linalg.norm(dual, axis=-1)


def fractional(positions, cell, pbc: tuple[bool, bool, bool]):
    """Wrap atoms into the cell along periodic axes.

    Returns ``wrapped`` (N, 3) Å, ``frac`` (N, 3) fractional coordinates of the wrapped atoms
    in the search basis, ``image`` (N, 3) int32 with ``positions = wrapped + image @ cell``,
    and the (3,) heights of the search basis (Å)."""
    basis = search_basis(cell, pbc)
    frac = positions @ inverse(basis)
    periodic = jnp.asarray(pbc)
    image = jnp.where(periodic, jnp.floor(frac), 0.0)
    wrapped = positions - image @ cell
    return wrapped, frac - image, image.astype(jnp.int32), heights(basis)


def reach_overflow(cutoff: float, height, n_bins, reach, pbc) -> jnp.ndarray:
    """True if a periodic axis needs more than ``reach`` bins on each side for this cell."""
    needed = cutoff * np.asarray(n_bins) / height
    return jnp.any(jnp.asarray(pbc) & (needed > np.asarray(reach)))


def error_code(n_edges, capacity: int, reach_exceeded, coincident, positions, mask, height, pbc,
               bins=None):
    """The :class:`jat.graph.GraphError` code of one build: bounds exceeded, coincident atoms,
    non-finite positions or a degenerate periodic cell (a zero or non-finite height)."""
    finite = jnp.all(jnp.where(mask[:, None], jnp.isfinite(positions), True))
    periodic = jnp.asarray(pbc)
    cell_ok = jnp.all(~periodic | (jnp.isfinite(height) & (height > 0)))
    codes = [
        flag(n_edges > capacity, GraphError.EDGES),
        flag(reach_exceeded & cell_ok, GraphError.IMAGES),
        flag(coincident, GraphError.COINCIDENT),
        flag(~(finite & cell_ok), GraphError.INVALID),
    ]
    if bins is not None:
        codes.append(flag(bins, GraphError.BIN_OCCUPANCY))
    return combine(*codes)


def offsets(reach: tuple[int, int, int]) -> np.ndarray:
    """(K, 3) int32 bin offsets scanned by every receiver, the zero offset at ``K // 2``."""
    ranges = [range(-r, r + 1) for r in reach]
    return np.array(list(itertools.product(*ranges)), dtype=np.int32).reshape(-1, 3)


SCAN_MIN_SIZE = 2**16  # from this length on, prefix sums use an associative scan


def cumsum(x):
    """Inclusive prefix sum along the first axis. Long arrays use an associative scan (several
    times faster than ``jnp.cumsum`` on CPU, but many more ops to compile)."""
    if x.shape[0] >= SCAN_MIN_SIZE:
        return lax.associative_scan(jnp.add, x)
    return jnp.cumsum(x, axis=0)


def _select_bit(word, rank):
    """Index of the ``rank``-th (0-based) set bit of each uint32 ``word``."""
    pos = jnp.zeros(word.shape, jnp.uint32)
    for step in (16, 8, 4, 2, 1):
        below = word & ((jnp.uint32(1) << (pos + step)) - 1)
        pos = jnp.where(lax.population_count(below).astype(jnp.int32) <= rank, pos + step, pos)
    return pos.astype(jnp.int32)


def find_edges(
    wrapped,
    image,
    cell,
    cutoff: float,
    pbc: tuple[bool, bool, bool],
    n_bins: tuple[int, int, int],
    reach: tuple[int, int, int],
    atom_bin,
    table,
    slot,
    receiver_mask,
    capacity: int,
):
    """Receiver-sorted edges of the binned atoms.

    ``atom_bin`` (N,) int32 flat bin of every atom, ``table`` (n_bins_total + 1, slots) atom
    index per bin slot (N when empty; the last row is an always-empty bin, ``slots`` a multiple
    of 32), ``slot`` (N,) slot of every atom in its bin. Every pair of bins (bin, bin + offset)
    is a dense (slots x slots) block of distances; hits are packed into 32-bit words. Returns
    ``senders, receivers, shifts, edge_mask, n_edges`` with static length ``capacity`` and
    ``coincident``, True if two atoms (or an atom and an image) are closer than
    :data:`jat.graph.errors.MIN_DISTANCE`.
    """
    n_total = int(np.prod(n_bins))
    offs = offsets(reach)
    n_off, slots = offs.shape[0], table.shape[1]
    n_words = slots // 32
    grid = np.asarray(n_bins, dtype=np.int32)
    periodic = np.asarray(pbc)

    # Static neighbouring bin (n_total = empty bin) and image shift per (bin, offset): (B, K).
    target = np.stack(np.unravel_index(np.arange(n_total), n_bins), -1)[:, None] + offs[None]
    shift = np.where(periodic, target // grid, 0).astype(np.int32)
    target = np.where(periodic, target % grid, target)
    inside = np.all((target >= 0) & (target < grid), axis=-1)
    flat = np.ravel_multi_index(tuple(np.moveaxis(target, -1, 0)), n_bins, mode="clip")
    neighbor_bin = jnp.asarray(np.where(inside, flat, n_total), jnp.int32)
    shift = jnp.asarray(shift)
    shift_cart = shift.astype(wrapped.dtype) @ cell

    # Squared distances of every (receiver slot, offset, sender slot) block, SoA by coordinate.
    padded = jnp.concatenate([wrapped, jnp.full((1, 3), jnp.inf, wrapped.dtype)])
    binned = padded.T[:, table]  # (3, B + 1, slots), inf in empty slots
    r2 = jnp.zeros((n_total, slots, n_off, slots), wrapped.dtype)
    for k in range(3):
        senders = binned[k][neighbor_bin] + shift_cart[..., k, None]
        d = binned[k][:n_total, :, None, None] - senders[:, None]
        r2 = r2 + d * d
    is_self = (np.arange(n_off)[:, None] == n_off // 2) & np.eye(slots, dtype=bool)[:, None]
    hit = (r2 < cutoff * cutoff) & ~is_self
    coincident = jnp.any(hit & (r2 < MIN_DISTANCE * MIN_DISTANCE))
    bits = hit.reshape(n_total, slots, n_off, n_words, 32).astype(jnp.uint32)
    bits = bits << jnp.arange(32, dtype=jnp.uint32)
    words = lax.reduce(bits, jnp.uint32(0), lax.bitwise_or, (4,))
    words = jnp.where(receiver_mask[:, None, None], words[atom_bin, slot], 0)
    pair_bin = neighbor_bin[atom_bin].reshape(-1)
    pair_shift = (shift[atom_bin] + image[:, None]).reshape(-1, 3)
    edges = compact(words.reshape(-1), n_words, pair_bin, pair_shift, table, image, capacity)
    return (*edges, coincident)


def compact(words, n_words: int, pair_bin, pair_shift, table, image, capacity: int):
    """Turn hit words into a receiver-sorted edge list of static length ``capacity``.

    words (N * K * n_words,) uint32 bit m of word w of row (i, o) set if slot 32 w + m of the
    bin ``pair_bin[(i, o)]`` neighbours i; pair_shift (N * K, 3) int32 image shift of that bin
    plus the image of i. Edge e lies in the word whose inclusive prefix count first exceeds e.
    """
    n = image.shape[0]
    n_off = pair_bin.shape[0] // n
    counts = lax.population_count(words).astype(jnp.int32)
    ends = cumsum(counts)
    n_edges = ends[-1]
    marks = jnp.zeros(capacity, jnp.int32).at[ends].add(1, mode="drop")
    word_of = jnp.minimum(cumsum(marks), words.shape[0] - 1)
    e = jnp.arange(capacity, dtype=jnp.int32)
    valid = e < n_edges
    bit = _select_bit(words[word_of], e - ends[word_of] + counts[word_of])
    pair = word_of // n_words  # index into the flattened (N, K) rows
    receivers = pair // n_off
    senders = table[pair_bin[pair], (word_of % n_words) * 32 + bit]
    image_pad = jnp.concatenate([image, jnp.zeros((1, 3), jnp.int32)])
    shifts = pair_shift[pair] - image_pad[senders]
    return (
        jnp.where(valid, senders, n).astype(jnp.int32),
        jnp.where(valid, receivers, n).astype(jnp.int32),
        jnp.where(valid[:, None], shifts, 0).astype(jnp.int32),
        valid,
        n_edges.astype(jnp.int32),
    )
