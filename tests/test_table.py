"""StructureTable: the columnar store the trainer reads data into gives back the structures."""

from __future__ import annotations

import numpy as np
import pytest

import jat.data.table as table_module
from jat.data import Structure, StructureTable, collect, data_dir, read_ani1
from jat.training.splits import fit_energy_reference, split_indices


def _structures(m: int = 11) -> list[Structure]:
    rng = np.random.default_rng(3)
    out = []
    for k in range(m):
        n = int(rng.integers(1, 7))
        periodic = k % 3 == 0
        out.append(
            Structure(
                symbols=tuple(rng.choice(["H", "C", "O", "Xe"], n).tolist()),
                positions=rng.normal(size=(n, 3)),
                cell=np.diag(rng.uniform(4, 6, 3)) if periodic else np.zeros((3, 3)),
                pbc=(True, True, periodic),
                energy=None if k % 4 == 1 else float(rng.normal()),
                forces=None if k % 2 else rng.normal(size=(n, 3)),
                stress=rng.normal(size=(3, 3)) if periodic else None,
                source=f"file{k % 2}.xyz:{k}",
                group=f"mol{k % 5}" if k % 7 else "",
                properties={"gap": float(k), "q": rng.normal(size=n)} if k % 2 else {},
            )
        )
    return out


def _same(a: Structure, b: Structure) -> None:
    assert a.symbols == b.symbols and a.pbc == b.pbc
    assert a.source == b.source and a.group == b.group and a.energy == b.energy
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.cell, b.cell)
    for x, y in ((a.forces, b.forces), (a.stress, b.stress)):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert set(a.properties) == set(b.properties)
    for key in a.properties:
        np.testing.assert_array_equal(a.properties[key], b.properties[key])


@pytest.mark.parametrize("block", [3, 4096])
def test_collect_gives_back_every_structure(monkeypatch, block):
    monkeypatch.setattr(table_module, "BLOCK", block)  # several blocks, some without forces
    structures = _structures()
    t = collect(iter(structures))
    assert isinstance(t, StructureTable) and len(t) == len(structures)
    for a, b in zip(structures, t, strict=True):
        _same(a, b)
    _same(structures[-1], t[-1])
    np.testing.assert_array_equal(t.n_atoms, [s.n_atoms for s in structures])
    assert t.sources == [s.source for s in structures]
    assert t.elements_present() == {"H", "C", "O", "Xe"}
    t[0].positions[0, 0] = 99.0  # a copy: the table is unchanged
    assert t[0].positions[0, 0] == structures[0].positions[0, 0]
    with pytest.raises(IndexError):
        t[len(structures)]
    with pytest.raises(TypeError):
        t["0"]


def test_take_and_slices_share_the_columns():
    structures = _structures()
    t = collect(structures)
    sub = t.take([5, 2, -1])
    assert sub.positions is t.positions and len(sub) == 3
    for k, s in zip([5, 2, 10], sub, strict=True):
        _same(structures[k], s)
    again = sub.take([2, 0])  # a subset of a subset
    _same(again[0], structures[10])
    _same(again[1], structures[5])
    np.testing.assert_array_equal(sub.n_atoms, [structures[k].n_atoms for k in (5, 2, 10)])
    assert sub.sources == [structures[k].source for k in (5, 2, 10)]
    only = t.take([s.symbols.count("Xe") == 0 for s in structures].index(True) + np.zeros(1, int))
    assert "Xe" not in only.elements_present()
    tail = t[8:]
    assert [s.source for s in tail] == [s.source for s in structures[8:]]
    assert len(t.take([])) == 0 and not t.take([])
    with pytest.raises(IndexError):
        t.take([11])


def test_empty_and_uniform_tables():
    empty = collect([])
    assert len(empty) == 0 and list(empty) == [] and empty.sources == []
    plain = [Structure(("H", "H"), np.eye(2, 3), np.zeros((3, 3)), (False,) * 3, energy=-1.0)]
    t = collect(plain)
    assert t.forces is None and t.stress is None and t.properties is None
    _same(t[0], plain[0])


def test_splits_and_reference_are_those_of_the_list():
    structures = _structures(40)
    t = collect(structures)
    for by in ("configuration", "molecule"):
        kw = {"by": by, "validation": 0.2, "test": 1 if by == "molecule" else 0.1, "seed": 4}
        assert split_indices(t, **kw) == split_indices(structures, **kw)
    kw = {"exclude_formulas": [structures[0].formula], "seed": 1}
    assert split_indices(t, **kw) == split_indices(structures, **kw)
    species = ("H", "C", "O", "Xe")
    for forces in (True, False):
        a, b = (
            fit_energy_reference(t, species, forces),
            fit_energy_reference(structures, species, forces),
        )
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
        assert a[1] == pytest.approx(b[1], rel=1e-12)


def test_an_ani1_conformation_costs_a_few_hundred_bytes():
    path = data_dir() / "ani1" / "ani_gdb_s01.h5"
    if not path.exists():
        pytest.skip(f"{path} not found (the shared ANI-1 data; set JAT_DATA_DIR)")
    t = collect(read_ani1(path))
    columns = [
        t.codes,
        t.offsets,
        t.positions,
        t.cell,
        t.pbc,
        t.energy,
        t.has_energy,
        t.has_forces,
        t.has_stress,
        t.source_offsets,
        t.group_codes,
    ]
    columns += [x for x in (t.forces, t.stress) if x is not None]
    per_structure = (sum(c.nbytes for c in columns) + len(t.source_bytes)) / len(t)
    assert per_structure < 400  # a list of Structure objects: about 1 300 B each
    _same(t[len(t) // 2], next(s for k, s in enumerate(read_ani1(path)) if k == len(t) // 2))


def test_split_record_is_the_json_of_the_sources_and_checks_it(tmp_path):
    """``split.json`` is written piece by piece, byte for byte ``json.dumps(indent=1)`` of the
    sets' sources (an empty set included); check_split accepts it, and also the same content in
    another layout, and refuses a changed split."""
    import dataclasses
    import json

    from jat.training.data import check_split, split_record
    from jat.training.rundir import SPLIT_FILE
    from jat.training.splits import SETS

    structures = _structures(11)
    for k, s in enumerate(structures):  # sources that need escaping
        structures[k] = dataclasses.replace(s, source=f'dir "é"\\{k}.xyz:{k}') if k % 3 == 0 else s
    t = collect(structures)
    sets = {
        "train": t.take(np.array([5, 2, 10, 0])),
        "validation": t.take(np.array([1, 3])),
        "test": t.take(np.array([], int)),
        "excluded": t.take(np.array([4])),
    }
    expected = json.dumps({n: sets[n].sources for n in SETS}, indent=1) + "\n"
    assert "".join(split_record(sets, batch=2)) == expected
    (tmp_path / SPLIT_FILE).write_text(expected)
    check_split(tmp_path, sets)
    (tmp_path / SPLIT_FILE).write_text(json.dumps({n: sets[n].sources for n in SETS}))
    check_split(tmp_path, sets)
    changed = dict(sets, validation=t.take(np.array([1, 6])))
    with pytest.raises(ValueError, match="no longer gives the same split"):
        check_split(tmp_path, changed)
