"""Tests of jat.graph against ase.neighborlist.neighbor_list("ijS")."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.neighborlist import neighbor_list as ase_neighbor_list

from jat.graph import Neighbors, NeighborSpec, allocate, build, grow, neighbor_list

METHODS = ("all_pairs", "cell_list")
TOLERANCE = 1e-4  # pairs closer than this to the cutoff are ambiguous in float32
REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("JAT_DATA_DIR", REPO / ".." / "shared" / "data"))
EAN_FILE = DATA_DIR / "ean" / "ean_15pairs_dft.jsonl"
BUILD = jax.jit(build, static_argnums=3)


def ase_sets(positions, cutoff, cell=None, pbc=False):
    """(certain, ambiguous) sets of (i, j, S) from ASE; ambiguous pairs lie within TOLERANCE."""
    atoms = ase.Atoms(
        numbers=np.ones(len(positions), int),
        positions=positions,
        cell=np.zeros((3, 3)) if cell is None else cell,
        pbc=pbc,
    )
    i, j, shifts, d = ase_neighbor_list("ijSd", atoms, cutoff + TOLERANCE)
    keys = list(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist()), strict=True))
    certain = {k for k, dist in zip(keys, d, strict=True) if dist < cutoff - TOLERANCE}
    return certain, set(keys) - certain


def edge_set(nb: Neighbors, n_atoms: int) -> set:
    """Valid edges as a set, after checking order and padding conventions."""
    mask = np.asarray(nb.mask)
    n_valid = int(mask.sum())
    assert not bool(nb.overflow)
    assert int(nb.n_edges) == n_valid
    assert mask[:n_valid].all() and not mask[n_valid:].any()
    receivers, senders = np.asarray(nb.receivers), np.asarray(nb.senders)
    shifts = np.asarray(nb.shifts)
    assert np.all(np.diff(receivers[:n_valid]) >= 0)
    assert np.all(receivers[n_valid:] == n_atoms) and np.all(senders[n_valid:] == n_atoms)
    assert np.all(shifts[n_valid:] == 0)
    assert nb.senders.dtype == jnp.int32 and nb.shifts.dtype == jnp.int32
    edges = list(
        zip(
            receivers[:n_valid].tolist(),
            senders[:n_valid].tolist(),
            map(tuple, shifts[:n_valid].tolist()),
            strict=True,
        )
    )
    assert len(set(edges)) == len(edges), "duplicate edges"
    return set(edges)


def compare(ours: set, positions, cutoff, cell=None, pbc=False) -> set:
    """Assert that an edge set matches ASE up to pairs within TOLERANCE of the cutoff."""
    certain, ambiguous = ase_sets(positions, cutoff, cell, pbc)
    assert certain <= ours, f"missing {sorted(certain - ours)[:5]}"
    assert ours <= certain | ambiguous, f"spurious {sorted(ours - certain - ambiguous)[:5]}"
    return ours


def check(positions, cutoff, cell=None, pbc=None, method="auto", mask=None):
    """Compare neighbor_list with ASE on the unmasked atoms; return the edge set."""
    nb = neighbor_list(positions, cutoff, cell, pbc, mask, method=method)
    ours = edge_set(nb, len(positions))
    if mask is not None:
        positions = positions[mask]
        assert all(mask[i] and mask[j] for i, j, _ in ours)
    return compare(ours, positions, cutoff, cell, (cell is not None) if pbc is None else pbc)


def random_cell(rng, triclinic: bool, scale: float):
    cell = np.diag(rng.uniform(0.7, 1.3, 3) * scale)
    if triclinic:
        cell += np.triu(rng.uniform(-0.4, 0.4, (3, 3)) * scale, 1)
        cell = cell @ np.linalg.qr(rng.normal(size=(3, 3)))[0]  # arbitrary orientation
    return cell


@pytest.mark.parametrize("method", METHODS)
def test_molecule_without_pbc(method):
    rng = np.random.default_rng(1)
    positions = rng.uniform(-6, 6, (40, 3)) + 100.0
    edges = check(positions, 3.0, method=method)
    assert edges and all(s == (0, 0, 0) for _, _, s in edges)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "triclinic, pbc",
    [
        (False, (True, True, True)),
        (True, (True, True, True)),
        (True, (True, False, True)),
        (True, (False, True, False)),
    ],
)
def test_random_cells(method, triclinic, pbc):
    rng = np.random.default_rng(hash((triclinic, pbc)) % 2**32)
    cell = random_cell(rng, triclinic, 9.0)
    positions = rng.uniform(0, 1, (60, 3)) @ cell
    check(positions, 3.5, cell, pbc, method)


@pytest.mark.parametrize("method", METHODS)
def test_cell_smaller_than_cutoff(method):
    rng = np.random.default_rng(2)
    cell = random_cell(rng, True, 2.2)
    positions = rng.uniform(0, 1, (5, 3)) @ cell
    edges = check(positions, 4.1, cell, True, method)
    assert any(i == j for i, j, _ in edges), "an atom must neighbour its own images"


@pytest.mark.parametrize("method", METHODS)
def test_single_atom_in_tiny_cell(method):
    cell = np.array([[1.1, 0.0, 0.0], [0.3, 1.3, 0.0], [0.2, 0.1, 0.9]])
    edges = check(np.array([[0.2, 0.3, 0.1]]), 2.5, cell, True, method)
    assert len(edges) > 20 and all(i == j == 0 for i, j, _ in edges)
    assert (0, 0, (0, 0, 0)) not in edges


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False)])
def test_atoms_outside_cell(method, pbc):
    rng = np.random.default_rng(3)
    cell = random_cell(rng, True, 7.0)
    positions = rng.uniform(-1.5, 2.5, (30, 3)) @ cell
    check(positions, 3.0, cell, pbc, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cell", [None, np.eye(3) * 5.0])
def test_zero_and_one_atom(method, cell):
    empty = neighbor_list(np.zeros((0, 3)), 3.0, cell, method=method)
    assert int(empty.n_edges) == 0 and not bool(empty.overflow)
    assert empty.senders.shape == empty.mask.shape and not np.asarray(empty.mask).any()
    one = neighbor_list(np.ones((1, 3)), 3.0, cell, method=method)
    assert int(one.n_edges) == 0 and not np.asarray(one.mask).any()
    assert np.all(np.asarray(one.senders) == 1)


@pytest.mark.parametrize("method", METHODS)
def test_padded_atoms_get_no_edges(method):
    rng = np.random.default_rng(4)
    cell = random_cell(rng, True, 8.0)
    positions = rng.uniform(0, 1, (30, 3)) @ cell
    padded = np.concatenate([positions, positions[:5] + 0.1, np.zeros((5, 3))])
    mask = np.arange(40) < 30
    check(padded, 3.0, cell, True, method, mask)


@pytest.mark.parametrize("method", METHODS)
def test_capacity_overflow(method):
    rng = np.random.default_rng(5)
    cell = np.eye(3) * 8.0
    positions = rng.uniform(0, 8, (40, 3))
    spec = allocate(positions, 3.5, cell, method=method, capacity=16)
    nb = BUILD(jnp.asarray(positions), jnp.asarray(cell), None, spec)
    assert bool(nb.overflow) and int(nb.n_edges) > 16 and np.asarray(nb.mask).all()
    assert grow(spec, nb).capacity >= int(nb.n_edges)
    full = neighbor_list(positions, 3.5, cell, method=method, capacity=16)
    compare(edge_set(full, 40), positions, 3.5, cell, True)


def test_cell_list_bounds_overflow_and_grow():
    rng = np.random.default_rng(6)
    cell = np.eye(3) * 12.0
    positions = rng.uniform(0, 12, (64, 3))
    spec = allocate(positions, 3.0, cell, method="cell_list", capacity=4096)
    crowded = positions.copy()
    crowded[:40] = rng.uniform(0, 2.0, (40, 3))  # 40 atoms in one bin
    nb = BUILD(jnp.asarray(crowded), jnp.asarray(cell), None, spec)
    assert bool(nb.overflow) and int(nb.n_edges) <= spec.capacity
    shrunk = BUILD(jnp.asarray(positions * 0.3), jnp.asarray(cell * 0.3), None, spec)
    assert bool(shrunk.overflow), "a cell that needs more images must report overflow"
    bigger = grow(spec, nb)
    assert bigger.bin_capacity > spec.bin_capacity
    nb = BUILD(jnp.asarray(crowded), jnp.asarray(cell), None, bigger)
    compare(edge_set(nb, 64), crowded, 3.0, cell, True)


@pytest.mark.parametrize("method", METHODS)
def test_vmap_padded_batch(method):
    rng = np.random.default_rng(7)
    sizes = (25, 40, 32)
    cells = np.stack([random_cell(rng, True, s) for s in (7.0, 8.0, 6.5)])
    positions = np.zeros((3, 40, 3))
    masks = np.zeros((3, 40), bool)
    for b, n in enumerate(sizes):
        positions[b, :n] = rng.uniform(0, 1, (n, 3)) @ cells[b]
        masks[b, :n] = True
    spec = allocate(positions, 3.0, cells, True, masks, method=method)
    batched = jax.jit(jax.vmap(build, in_axes=(0, 0, 0, None)), static_argnums=3)
    nbs = batched(jnp.asarray(positions), jnp.asarray(cells), jnp.asarray(masks), spec)
    for b, n in enumerate(sizes):
        nb = jax.tree_util.tree_map(lambda x, b=b: x[b], nbs)
        compare(edge_set(nb, 40), positions[b, :n], 3.0, cells[b], True)


def test_auto_method_and_spec():
    rng = np.random.default_rng(8)
    small = allocate(rng.uniform(0, 5, (10, 3)), 2.0)
    assert small.method == "all_pairs" and small.pbc == (False, False, False)
    large = allocate(rng.uniform(0, 30, (2000, 3)), 3.0, np.eye(3) * 30.0)
    assert large.method == "cell_list" and large.pbc == (True, True, True)
    assert hash(large) == hash(NeighborSpec(**vars(large)))
    assert large.capacity % 64 == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(positions=np.full((2, 3), np.nan)), "NaN"),
        (dict(positions=np.zeros((2, 2))), "shape"),
        (dict(cutoff=0.0), "cutoff"),
        (dict(cell=np.diag([5.0, 5.0, 0.0]), pbc=True), "singular"),
        (dict(pbc=True), "cell"),
        (dict(method="octree"), "method"),
    ],
)
def test_allocate_validation(kwargs, message):
    args = dict(positions=np.zeros((2, 3)), cutoff=3.0) | kwargs
    positions, cutoff = args.pop("positions"), args.pop("cutoff")
    with pytest.raises(ValueError, match=message):
        allocate(positions, cutoff, **args)


def test_singular_cell_on_free_axis_is_allowed():
    cell = np.diag([6.0, 6.0, 0.0])
    positions = np.random.default_rng(9).uniform(0, 6, (20, 3))
    check(positions, 2.5, cell, (True, True, False), "cell_list")


def read_ean_box() -> tuple[np.ndarray, np.ndarray]:
    """Positions (225, 3) Å and orthorhombic cell (3, 3) Å of the first EAN configuration."""
    if not EAN_FILE.exists():
        pytest.skip(f"EAN data not found at {EAN_FILE} (set JAT_DATA_DIR)")
    with EAN_FILE.open() as f:
        record = json.loads(f.readline())
    return np.array(record["Positions"]), np.diag(record["Cell-Size"])


@pytest.mark.parametrize("method", METHODS)
def test_ean_box(method):
    positions, cell = read_ean_box()
    assert positions.shape == (225, 3)
    edges = check(positions, 5.0, cell, True, method)
    assert len(edges) > 10_000


@pytest.mark.parametrize("method", METHODS)
def test_estimated_capacity_is_close_to_the_count_and_grown_when_low(method):
    """neighbor_list sizes its edge capacity from the number density (no host count): close to
    the exact count for uniform matter, and an underestimate (all atoms in one corner of a
    periodic box) is grown from the build's own count, giving the exact list."""
    rng = np.random.default_rng(7)
    cell = np.diag([12.0, 11.0, 13.0])
    liquid = rng.uniform(0, 1, (300, 3)) @ cell
    for pbc in [(True, True, True), (True, True, False), (False, False, False)]:
        exact = allocate(liquid, 3.5, cell, pbc, method=method)
        estimated = allocate(liquid, 3.5, cell, pbc, method=method, estimate=True)
        assert exact.capacity / 1.5 <= estimated.capacity <= 2.5 * exact.capacity, pbc
    corner = rng.uniform(0, 0.25, (300, 3)) @ cell
    low = allocate(corner, 3.5, cell, True, method=method, estimate=True)
    assert low.capacity < allocate(corner, 3.5, cell, True, method=method).capacity
    check(corner, 3.5, cell, True, method)
