"""Per-batch neighbour lists (``training.neighbor_lists: per_batch``): the same graphs, losses and
runs as stored lists, compact rows, a lazy data set read once in order, bad structures named."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import write
from conftest import emt_labelled, rattled_copper_file

import jat
from jat.config import config_from_dict
from jat.data import read_structures
from jat.data.structure import DataError, Structure
from jat.training import steps, train
from jat.training.dataset import (
    Bucket,
    PackedBucket,
    align_edge_slots,
    build_dataset,
    check_graph_errors,
    choose_buckets,
)
from jat.training.loop import METRICS_FILE


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Rattled periodic Cu (4 and 8 atoms, one sheared cell) and small molecules, EMT labels."""
    out = []
    for k in range(10):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        if k % 3 == 0:
            atoms = atoms.repeat((2, 1, 1))
        if k == 4:
            atoms.set_cell(atoms.cell.array + [[0, 0, 0], [0.6, 0, 0], [0, 0.3, 0]], True)
        atoms.rattle(0.1, seed=k)
        out.append(emt_labelled(atoms))
    for k in range(9):
        atoms = molecule(("CH4", "NH3", "H2O")[k % 3])
        atoms.rattle(0.05, seed=k)
        out.append(emt_labelled(atoms))
    path = tmp_path_factory.mktemp("mixed") / "mixed.extxyz"
    write(path, out)
    return list(read_structures(path))


SPECIES = ("H", "C", "N", "O", "Cu")


def _datasets(structures, dtype=np.float32, max_buckets=3):
    bounds = choose_buckets([s.n_atoms for s in structures], max_buckets)
    shift = np.zeros(len(SPECIES))
    stored = build_dataset(structures, SPECIES, 3.0, shift, bounds)
    packed = build_dataset(
        structures, SPECIES, 3.0, shift, bounds, neighbor_lists="per_batch", dtype=dtype
    )
    return stored, packed


def _edge_set(g, source_of_slot):
    m = np.asarray(g.edge_mask)
    snd, rcv = np.asarray(g.senders)[m], np.asarray(g.receivers)[m]
    shifts = np.asarray(g.shifts)[m]
    return sorted(
        (source_of_slot[s], s, r, tuple(t)) for s, r, t in zip(snd, rcv, shifts, strict=True)
    )


def _edges_by_structure(data):
    """Per structure index: its sorted (sender, receiver, shift) edges, atoms numbered within it."""
    out = {}
    for bucket in data.buckets:
        n = bucket.shape[0]
        rows = np.arange(len(bucket))
        g = bucket.batch(rows, len(bucket), jnp.float32).graph
        m = np.asarray(g.edge_mask)
        snd, rcv = np.asarray(g.senders)[m], np.asarray(g.receivers)[m]
        shifts = np.asarray(g.shifts)[m]
        for s, r, t in zip(snd, rcv, shifts, strict=True):
            k = int(bucket.index[s // n])
            out.setdefault(k, []).append((s % n, r % n, tuple(int(x) for x in t)))
    return {k: sorted(v) for k, v in out.items()}


def test_per_batch_graphs_are_the_stored_graphs(mixed):
    stored, packed = _datasets(mixed)
    assert all(isinstance(b, Bucket) for b in stored.buckets)
    assert all(isinstance(b, PackedBucket) for b in packed.buckets)
    # periodic and free structures of one size go to separate buckets (one spec each)
    assert len(packed.buckets) > len(stored.buckets)
    assert sorted(int(i) for b in packed.buckets for i in b.index) == list(range(len(mixed)))
    assert _edges_by_structure(stored) == _edges_by_structure(packed)
    for b in packed.buckets:
        assert b.species.dtype == np.int8 and b.positions.dtype == np.float32
        n = b.shape[0]
        assert b.shape[1] % 8 == 0 or (not any(b.spec.pbc) and b.shape[1] == n * (n - 1))


def test_incomplete_device_lists_are_never_used(mixed):
    """A batch whose device-built lists dropped edges (here: capacity cut by hand) says so."""
    import dataclasses

    packed = _datasets(mixed)[1]
    bucket = max(packed.buckets, key=lambda b: b.shape[1])
    ok = bucket.batch(np.arange(2), 2, jnp.float32)
    assert not np.asarray(ok.graph_error).any()
    cut = dataclasses.replace(bucket, spec=dataclasses.replace(bucket.spec, capacity=8))
    bad = cut.batch(np.arange(2), 2, jnp.float32)
    assert np.asarray(bad.graph_error).any()
    check_graph_errors([None, np.asarray(ok.graph_error)], str)
    with pytest.raises(RuntimeError, match="batch of frames 1-2 are incomplete"):
        check_graph_errors([np.asarray(ok.graph_error), np.asarray(bad.graph_error)],
                           lambda k: "frames 1-2")


def test_per_batch_losses_equal_stored_losses(mixed):
    pot = jat.Potential.create("jat", list(SPECIES), 3.0, layers=1, width=8, heads=1)
    spec = steps.LossSpec(forces_weight=1.0, energy_weight=0.5)
    evaluate = jax.jit(functools.partial(steps.eval_step, pot.energy_model, spec, True))
    stored, packed = _datasets(mixed, max_buckets=1)
    aligned = align_edge_slots({"a": stored, "b": packed})

    def total(data, size):
        parts = [evaluate(pot.params, jnp.ones(1), batch) for _, batch in
                 data.iterate(size, jnp.float32)]
        return steps.reduce_sums(parts)

    ref = total(stored, 4)
    for data, size in ((packed, 4), (aligned["b"], 3)):
        got = total(data, size)
        for key in ref:
            assert got[key] == pytest.approx(ref[key], rel=2e-5, abs=1e-7), key


class CountingSequence(Sequence):
    """A lazy data set: structures made on request, every request counted."""

    def __init__(self, structures):
        self.structures, self.requests = structures, []

    def __len__(self):
        return len(self.structures)

    def __getitem__(self, k):
        if isinstance(k, slice):
            raise TypeError("no slices")
        if k >= len(self.structures):
            raise IndexError(k)
        self.requests.append(k)
        return self.structures[k]


def test_lazy_sequence_is_read_once_in_order(mixed, monkeypatch):
    from jat.training import dataset

    monkeypatch.setattr(dataset, "PACK_CHUNK", 4)  # several blocks per bucket
    lazy = CountingSequence(mixed)
    bounds = choose_buckets([s.n_atoms for s in mixed], 3)
    data = build_dataset(lazy, SPECIES, 3.0, np.zeros(len(SPECIES)), bounds,
                         neighbor_lists="per_batch", dtype=np.float32)
    assert lazy.requests == list(range(len(mixed)))
    assert data.structures is lazy and len(data) == len(mixed)
    assert _edges_by_structure(data) == _edges_by_structure(_datasets(mixed)[0])


def test_per_batch_names_atoms_at_one_position(mixed):
    bad = mixed[5]
    positions = bad.positions.copy()
    positions[2] = positions[1]
    broken = Structure(bad.symbols, positions, bad.cell, bad.pbc, energy=bad.energy,
                       forces=bad.forces, source="frame 5 of bad.extxyz")
    structures = [*mixed[:5], broken, *mixed[6:]]
    with pytest.raises(DataError, match=r"frame 5 of bad\.extxyz: atoms 1 \(Cu\) and 2"):
        _datasets(structures)


def test_per_batch_run_trains_like_a_stored_run_with_or_without_prefetching(tmp_path):
    data = rattled_copper_file(tmp_path, 12)

    def run(lists, prefetch=2):
        name = f"{lists}-{prefetch}"
        cfg = config_from_dict({
            "name": name,
            "run_dir": str(tmp_path / name),
            "data": {"train": str(data), "split": {"validation": 3}},
            "model": {"name": "jat", "cutoff": 3.0, "layers": 1, "width": 8, "heads": 1},
            "training": {"epochs": 2, "batch_size": 4, "neighbor_lists": lists,
                         "prefetch": prefetch},
            "logging": {"progress": "none"},
        })
        train(cfg)
        lines = (tmp_path / name / METRICS_FILE).read_text().splitlines()
        return [json.loads(line) for line in lines]

    keys = ("train_loss", "val_loss", "val_forces_mae", "val_energy_atom_mae")
    stored, packed, in_loop = run("stored"), run("per_batch"), run("per_batch", prefetch=0)
    for a, b, c in zip(stored, packed, in_loop, strict=True):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
            assert c[key] == b[key], key  # the same batches in the same order: equal results


def test_neighbor_lists_option_is_validated():
    with pytest.raises(Exception, match="neighbor_lists"):
        config_from_dict({"training": {"neighbor_lists": "sometimes"}})
    with pytest.raises(ValueError, match="neighbor_lists"):
        build_dataset(list(read_structures("builtin"))[:2], ("H", "C", "N", "O"), 3.0,
                      np.zeros(4), [45], neighbor_lists="sometimes")


def _streaming_benchmark():
    """benchmarks/streaming.py as a module; skips when the ANI-1 files it perturbs are absent."""
    import importlib
    import sys
    from pathlib import Path

    from jat.data import data_dir

    if not (data_dir() / "ani1" / "ani_gdb_s01.h5").is_file():
        pytest.skip(f"ANI-1 files not found under {data_dir()} (set $JAT_DATA_DIR)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        return importlib.import_module("streaming")
    finally:
        sys.path.pop(0)


def test_streaming_benchmark_set_is_lazy_and_seeded():
    """benchmarks/streaming.py's synthetic ANI-1-like set: made on request, the same each time."""
    SyntheticAni1 = _streaming_benchmark().SyntheticAni1
    a, b = SyntheticAni1(1_000_000, None), SyntheticAni1(10, None)
    assert len(a) == 1_000_000
    assert np.array_equal(a[3].positions, b[3].positions) and a[3].energy == b[3].energy
    assert not np.array_equal(a[3].positions, a[3 + len(a.symbols)].positions)
    with pytest.raises(IndexError):
        b[10]


def test_streaming_benchmark_writes_an_ani1_file_the_reader_takes(tmp_path):
    """The whole-command measurement's HDF5 file: ANI-1's layout, exactly n conformations."""
    from jat.data import read_ani1

    path = tmp_path / "synthetic.h5"
    # more than one repeat of the 61 762 base conformations
    _streaming_benchmark().write_ani1_like(70_000, str(path), None)
    structures = list(read_ani1(path))
    assert len(structures) == 70_000
    assert {x for s in structures[::1000] for x in s.symbols} <= {"H", "C", "N", "O"}
    assert len({s.group for s in structures}) > 2 and all(np.isfinite(s.energy)
                                                           for s in structures[::1000])
