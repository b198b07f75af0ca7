"""Data readers: real reference data where present (skipped otherwise), synthetic files for every
error case. Error messages must name the file and the entry."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import Hartree, kcal, mol

import jat.data.readers as readers_module
from jat.data import (
    EAN_COMPOSITION,
    EAN_SPECIES,
    DataError,
    Structure,
    data_dir,
    detect_format,
    ean_symbols,
    list_ani1_molecules,
    read_ani1,
    read_ase,
    read_ean,
    read_md17,
    read_neuralil,
    read_structures,
)
from jat.data.ase_io import atoms_structure
from jat.data.ean import ANION, CATION
from jat.data.neuralil import composition_units

KCAL_MOL = kcal / mol


def real_file(relative: str) -> Path:
    path = data_dir() / relative
    if not path.is_file():
        pytest.skip(f"reference data not found at {path} (set JAT_DATA_DIR to the data directory)")
    return path


def assert_float64(s: Structure) -> None:
    for array in (s.positions, s.cell, s.forces, s.stress):
        assert array is None or array.dtype == np.float64


# ---------------------------------------------------------------------------------------------
# Synthetic files


def write_ani1(path: Path, molecules: dict[str, dict[str, np.ndarray]]) -> Path:
    """An ANI-1 style file; ``molecules`` maps ``top/mol`` keys to their datasets."""
    with h5py.File(path, "w") as h5:
        for key, datasets in molecules.items():
            group = h5.require_group(key)
            for name, value in datasets.items():
                group.create_dataset(name, data=value)
    return path


def ani1_molecule(species: str, n_conf: int, seed: int = 0, he: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(species)
    return {
        "species": np.array([s.encode() for s in species], dtype="S1"),
        "coordinates": rng.normal(size=(n_conf, n, 3)).astype(np.float32),
        "energies": -40.0 - rng.random(n_conf),
        "coordinatesHE": rng.normal(size=(he, n, 3)).astype(np.float32),
        "energiesHE": -39.0 - rng.random(he),
    }


@pytest.fixture
def ani1_file(tmp_path) -> Path:
    return write_ani1(
        tmp_path / "mini.h5",
        {
            "s01/s01-0": ani1_molecule("CHHHH", 40, seed=1, he=6),
            "s01/s01-1": ani1_molecule("NHHH", 20, seed=2),
            "s01/s01-2": ani1_molecule("OHH", 9, seed=3),
        },
    )


def neuralil_line(n_pairs: int = 1, seed: int = 0, **override) -> str:
    rng = np.random.default_rng(seed)
    n = 15 * n_pairs
    entry = {
        "Energy": -10.5,
        "Positions": rng.uniform(0, 9, size=(n, 3)).tolist(),
        "Forces": rng.normal(size=(n, 3)).tolist(),
        "Cell-Size": [9.0, 9.5, 10.0],
        "Charges": [0.0] * n,
    }
    entry.update(override)
    return json.dumps({k: v for k, v in entry.items() if v is not None})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_md17(path: Path, n: int = 4, drop: tuple[str, ...] = (), **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "R": rng.normal(size=(n, 3, 3)),
        "z": np.array([8, 1, 1], dtype=np.uint8),
        "E": rng.normal(size=(n, 1)) - 47000.0,
        "F": rng.normal(size=(n, 3, 3)),
        "name": np.array("water"),
    }
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


def labelled_atoms(periodic: bool = True, seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = Atoms("H2OCl", positions=rng.uniform(0, 4, size=(4, 3)))
    if periodic:
        atoms.cell = [[5.0, 0.0, 0.0], [0.5, 6.0, 0.0], [0.0, 0.3, 7.0]]
        atoms.pbc = True
    stress = rng.normal(size=6) * 0.01 if periodic else None
    atoms.calc = SinglePointCalculator(
        atoms, energy=float(rng.normal()) - 5, forces=rng.normal(size=(4, 3)), stress=stress
    )
    return atoms


# ---------------------------------------------------------------------------------------------
# ANI-1


def test_ani1_real_units_and_labels():
    path = real_file("ani1/ani_gdb_s01.h5")
    with h5py.File(path) as h5:
        energy0 = h5["gdb11_s01/gdb11_s01-0/energies"][0]
        coords0 = h5["gdb11_s01/gdb11_s01-0/coordinates"][0]
    structures = list(read_ani1(path))
    assert len(structures) == 10800
    first = structures[0]
    assert first.energy == pytest.approx(energy0 * Hartree, rel=1e-14)
    np.testing.assert_array_equal(first.positions, coords0.astype(np.float64))
    assert first.symbols == ("C", "H", "H", "H", "H")
    assert first.source == "ani_gdb_s01.h5:gdb11_s01/gdb11_s01-0[0]"
    assert first.group == "gdb11_s01/gdb11_s01-0"
    assert first.pbc == (False, False, False) and not first.cell.any() and first.forces is None
    assert_float64(first)
    assert {s.formula for s in structures} == {"CH4", "H3N", "H2O"}


def test_list_ani1_molecules_real():
    path = real_file("ani1/ani_gdb_s01.h5")
    assert list_ani1_molecules(path) == [
        ("gdb11_s01/gdb11_s01-0", "CH4", 5400),
        ("gdb11_s01/gdb11_s01-1", "H3N", 3600),
        ("gdb11_s01/gdb11_s01-2", "H2O", 1800),
    ]


def test_ani1_real_high_energy():
    path = real_file("ani1/ani_gdb_s02.h5")
    key = "gdb11_s02/gdb11_s02-6"  # H2O2: 2819 regular + 61 high-energy conformations
    regular = list(read_ani1(path, molecules=[key]))
    both = list(read_ani1(path, molecules=key, high_energy=True))
    assert len(regular) == 2819 and len(both) == 2819 + 61
    assert both[-1].source == f"ani_gdb_s02.h5:{key}/coordinatesHE[60]"
    assert {s.group for s in both} == {key}


def test_ani1_fraction_reproducible_and_per_molecule(ani1_file):
    def sources(**kw):
        return [s.source for s in read_ani1(ani1_file, **kw)]

    picked = sources(fraction=0.25, seed=3)
    assert picked == sources(fraction=0.25, seed=3)
    assert picked != sources(fraction=0.25, seed=4)
    counts = {key: sum(f"{key}[" in s for s in picked) for key in ("s01-0", "s01-1", "s01-2")}
    assert counts == {"s01-0": 10, "s01-1": 5, "s01-2": 2}  # round(0.25 * n), at least 1
    # The draw of a molecule does not depend on which other molecules are read.
    alone = sources(fraction=0.25, seed=3, molecules=["s01/s01-1"])
    assert alone == [s for s in picked if "s01-1[" in s]
    # Indices come out sorted and unique; a tiny fraction still keeps one per molecule.
    idx = [int(s.rsplit("[", 1)[1][:-1]) for s in picked if "s01-0[" in s]
    assert idx == sorted(set(idx))
    assert len(sources(fraction=1e-6)) == 3


def test_ani1_fraction_selects_matching_rows(ani1_file):
    with h5py.File(ani1_file) as h5:
        coords = h5["s01/s01-0/coordinates"][()]
        energies = h5["s01/s01-0/energies"][()]
    for s in read_ani1(ani1_file, fraction=0.3, molecules=["s01/s01-0"]):
        i = int(s.source.rsplit("[", 1)[1][:-1])
        np.testing.assert_array_equal(s.positions, coords[i])
        assert s.energy == pytest.approx(energies[i] * Hartree, rel=1e-14)


def test_ani1_high_energy_synthetic(ani1_file):
    regular = [s.source for s in read_ani1(ani1_file, fraction=0.5, seed=1)]
    both = [s.source for s in read_ani1(ani1_file, fraction=0.5, seed=1, high_energy=True)]
    he = [s for s in both if "coordinatesHE" in s]
    assert len(he) == 3 and [s for s in both if "coordinatesHE" not in s] == regular


def test_ani1_opens_once_and_reads_lazily(tmp_path, monkeypatch):
    bad = ani1_molecule("OHH", 5)
    bad["energies"] = bad["energies"][:4]  # 4 energies for 5 conformations
    path = write_ani1(tmp_path / "lazy.h5", {"a/a-0": ani1_molecule("CHHHH", 5), "a/a-1": bad})
    opened: list = []
    read: list[str] = []
    real_file_class, real_getitem = h5py.File, h5py.Dataset.__getitem__

    def counting_file(*args, **kwargs):
        opened.append(args[0])
        return real_file_class(*args, **kwargs)

    def recording_getitem(self, selection):
        read.append(self.name)
        return real_getitem(self, selection)

    monkeypatch.setattr(h5py, "File", counting_file)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording_getitem)
    structures = read_ani1(path)
    assert opened == []  # nothing is opened until iteration starts
    first = next(structures)
    assert first.source == "lazy.h5:a/a-0[0]"
    assert read and all(name.startswith("/a/a-0/") for name in read)
    with pytest.raises(DataError, match=r"lazy\.h5: a/a-1: energies has shape \(4,\), expected"):
        list(structures)
    assert len(opened) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"energies": None}, "s01/s01-1: missing dataset 'energies'"),
        ({"species": np.array([b"N", b"H", b"H"])}, r"coordinates has shape \(20, 4, 3\)"),
        ({"species": np.array([b"N", b"Xx", b"H", b"H"])}, r"unknown element symbol\(s\) \['Xx'\]"),
        ({"coordinates": np.zeros((20, 4, 2), np.float32)}, r"expected \(n_conf, 4, 3\)"),
        ({"energies": np.r_[np.zeros(7), np.nan, np.zeros(12)]}, r"s01/s01-1\[7\]: energy"),
        ({"coordinates": np.full((20, 4, 3), np.inf)}, r"s01/s01-1\[0\]: coordinates"),
        ({"coordinates": np.array(["x"] * 20, dtype="S1")}, "non-numeric dtype"),
    ],
)
def test_ani1_malformed(tmp_path, change, message):
    mol = ani1_molecule("NHHH", 20)
    for name, value in change.items():
        if value is None:
            del mol[name]
        else:
            mol[name] = value
    path = write_ani1(tmp_path / "bad.h5", {"s01/s01-1": mol})
    with pytest.raises(DataError, match=message) as info:
        list(read_ani1(path))
    assert str(path) in str(info.value)


def test_ani1_file_errors(tmp_path, ani1_file):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        read_ani1(tmp_path / "nowhere.h5")
    empty = tmp_path / "empty.h5"
    empty.touch()
    with pytest.raises(DataError, match=r"empty\.h5: empty file"):
        read_ani1(empty)
    no_groups = write_ani1(tmp_path / "nogroups.h5", {})
    with pytest.raises(DataError, match=r"nogroups\.h5: no molecule groups"):
        list(read_ani1(no_groups))
    text = tmp_path / "text.h5"
    text.write_text("not hdf5\n")
    with pytest.raises(DataError, match=r"text\.h5: not a readable HDF5 file"):
        list(read_ani1(text))
    with pytest.raises(ValueError, match=r"mini\.h5: no molecule group\(s\) \['s01/s01-9'\]"):
        list(read_ani1(ani1_file, molecules=["s01/s01-1", "s01/s01-9"]))
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            read_ani1(ani1_file, fraction=fraction)


def test_list_ani1_molecules_synthetic(ani1_file):
    assert list_ani1_molecules(ani1_file) == [
        ("s01/s01-0", "CH4", 40),
        ("s01/s01-1", "H3N", 20),
        ("s01/s01-2", "H2O", 9),
    ]


# ---------------------------------------------------------------------------------------------
# NeuralIL and EAN


def test_neuralil_real_and_read_ean():
    path = real_file("ean/ean_15pairs_dft.jsonl")
    structures = list(read_neuralil(path))
    assert len(structures) == 50
    first = structures[0]
    entry = json.loads(path.open().readline())
    assert first.symbols == tuple(ean_symbols(225))
    assert first.formula == "C30H120N30O45"
    assert first.energy == entry["Energy"]
    np.testing.assert_array_equal(first.forces, np.array(entry["Forces"]))
    np.testing.assert_array_equal(first.cell, np.diag(entry["Cell-Size"]))
    assert first.pbc == (True, True, True) and first.source == f"{path.name}:line 1"
    assert_float64(first)
    atoms = read_ean(path, index=0)[0]
    assert atoms.get_chemical_formula() == "C30H120N30O45" and atoms.pbc.all()
    assert atoms.get_potential_energy() == entry["Energy"]
    np.testing.assert_array_equal(atoms.get_forces(), first.forces)
    assert len(read_ean(path, index=slice(0, 8))) == 8


def test_ean_symbols_and_composition():
    assert composition_units(EAN_COMPOSITION) == (CATION, ANION)
    assert set(EAN_SPECIES) == set(CATION + ANION)
    assert ean_symbols(30) == list(CATION * 2 + ANION * 2)
    with pytest.raises(ValueError, match="31 atoms"):
        ean_symbols(31)


def test_neuralil_composition_forms(tmp_path):
    path = write_lines(tmp_path / "salt.jsonl", [neuralil_line(n_pairs=1)])  # 15 atoms
    s = next(read_neuralil(path, composition=("NaCl", ["Cl", "O", "O"])))  # 5 atoms a copy
    assert s.symbols == ("Na", "Cl") * 3 + ("Cl", "O", "O") * 3
    assert next(read_neuralil(path, composition="CH4")).formula == "C3H12"
    assert composition_units("H2O") == (("H", "H", "O"),)
    for bad in ("Xx", "nh", (), ("",), [["H", "Qq"]]):
        with pytest.raises(ValueError, match="composition"):
            read_neuralil(path, composition=bad)


def test_neuralil_copies_in_unit_order(tmp_path):
    path = write_lines(tmp_path / "two.jsonl", [neuralil_line(n_pairs=2)])  # 30 atoms
    s = next(read_neuralil(path, composition=("ClO4", ["Na"], "H9")))
    assert s.symbols == ("Cl", "O", "O", "O", "O") * 2 + ("Na",) * 2 + ("H",) * 18


def test_neuralil_index(tmp_path):
    lines = [neuralil_line(seed=k, Energy=float(k)) for k in range(5)]
    path = write_lines(tmp_path / "idx.jsonl", lines[:2] + [""] + lines[2:])  # a blank line
    energies = [s.energy for s in read_neuralil(path)]
    assert energies == [0, 1, 2, 3, 4]
    assert [s.energy for s in read_neuralil(path, index=slice(1, None, 2))] == [1, 3]
    assert [s.energy for s in read_neuralil(path, index=slice(None, None, -2))] == [4, 2, 0]
    last = next(read_neuralil(path, index=-1))
    assert last.energy == 4 and last.source == "idx.jsonl:line 6"
    with pytest.raises(IndexError, match=r"idx\.jsonl: configuration 5 out of range"):
        list(read_neuralil(path, index=5))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            neuralil_line(Forces=np.zeros((14, 3)).tolist()),
            r"Forces has shape \(14, 3\), expected \(15, 3\)",
        ),
        (neuralil_line(Energy=None), r"missing key\(s\) \['Energy'\]"),
        (
            neuralil_line(Positions=np.zeros((14, 3)).tolist(), Forces=np.zeros((14, 3)).tolist()),
            "14 atoms is not a positive whole number of composition units",
        ),
        (
            neuralil_line(Positions=[[0, 0]] * 15),
            r"Positions has shape \(15, 2\), expected \(N, 3\)",
        ),
        (neuralil_line(Energy=float("nan")), "Energy has non-finite values"),
        (neuralil_line(Forces=[[float("inf"), 0, 0]] + [[0, 0, 0]] * 14), "Forces has non-finite"),
        (neuralil_line(**{"Cell-Size": [9.0, 0.0, 9.0]}), "Cell-Size must be 3 positive lengths"),
        (
            neuralil_line(**{"Cell-Size": [9.0, 9.0]}),
            r"Cell-Size has shape \(2,\), expected \(3,\)",
        ),
        (neuralil_line(Energy="low"), "Energy is not a numeric array"),
        ('{"Energy": 1.0, ', "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object, got list"),
    ],
)
def test_neuralil_malformed(tmp_path, line, message):
    path = write_lines(tmp_path / "ean.jsonl", [neuralil_line(), line])
    structures = read_neuralil(path)
    assert next(structures).source == "ean.jsonl:line 1"
    with pytest.raises(DataError, match=message) as info:
        next(structures)
    assert f"{path}: line 2: " in str(info.value)


def test_neuralil_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_neuralil(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_ean(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file"):
        read_neuralil(empty)
    blank = write_lines(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"blank\.jsonl: no configurations"):
        list(read_neuralil(blank))
    with pytest.raises(DataError, match=r"blank\.jsonl: no configurations"):
        list(read_neuralil(blank, index=0))


# ---------------------------------------------------------------------------------------------
# MD17


def test_md17_real_units():
    path = real_file("md17/md17_ethanol_1000.npz")
    raw = np.load(path)
    structures = list(read_md17(path))
    assert len(structures) == 1000
    first = structures[0]
    assert first.symbols == ("C", "C", "O", "H", "H", "H", "H", "H", "H")
    assert first.energy == pytest.approx(raw["E"][0, 0] * KCAL_MOL, rel=1e-14)
    np.testing.assert_allclose(first.forces, raw["F"][0] * KCAL_MOL, rtol=1e-14)
    np.testing.assert_array_equal(first.positions, raw["R"][0])
    assert first.source == "md17_ethanol_1000.npz:frame 0" and first.pbc == (False,) * 3
    assert_float64(first)


def test_md17_synthetic_shapes(tmp_path):
    flat = write_md17(tmp_path / "flat.npz", E=np.arange(4.0))
    assert [s.energy for s in read_md17(flat)] == pytest.approx(np.arange(4.0) * KCAL_MOL)
    no_forces = write_md17(tmp_path / "noF.npz", drop=("F",))
    assert all(s.forces is None for s in read_md17(no_forces))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop": ("R",)}, r"missing array\(s\) \['R'\]"),
        ({"drop": ("z", "E")}, r"missing array\(s\) \['z', 'E'\]"),
        ({"E": np.zeros((3, 1))}, r"E has shape \(3, 1\), expected \(4,\) or \(4, 1\)"),
        ({"F": np.zeros((4, 2, 3))}, r"F has shape \(4, 2, 3\), expected \(4, 3, 3\)"),
        ({"R": np.zeros((4, 3, 2))}, r"R has shape \(4, 3, 2\), expected \(N, 3, 3\)"),
        ({"z": np.array([8, 1, 0])}, r"unknown atomic number\(s\) \[0\]"),
        ({"z": np.array([8.0, 1.0, 1.0])}, "z must be a 1-D integer array"),
        ({"E": np.array([[0.0], [np.nan], [0.0], [0.0]])}, "frame 1: E is not finite"),
        ({"F": np.full((4, 3, 3), np.inf)}, "frame 0: F is not finite"),
        ({"R": np.zeros((0, 3, 3)), "E": np.zeros(0), "F": np.zeros((0, 3, 3))}, "no frames"),
        ({"lattice": np.eye(3)}, "periodic sGDML data"),
    ],
)
def test_md17_malformed(tmp_path, kwargs, message):
    path = write_md17(tmp_path / "bad.npz", **kwargs)
    with pytest.raises(DataError, match=message) as info:
        list(read_md17(path))
    assert str(path) in str(info.value)


def test_md17_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.npz"):
        read_md17(tmp_path / "gone.npz")
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(DataError, match=r"text\.npz: not a readable \.npz archive"):
        list(read_md17(text))


# ---------------------------------------------------------------------------------------------
# ASE


def test_extxyz_round_trip(tmp_path):
    import ase.io
    from ase.stress import voigt_6_to_full_3x3_stress

    frames = [labelled_atoms(seed=k) for k in range(3)] + [labelled_atoms(periodic=False)]
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, frames, format="extxyz")
    structures = list(read_ase(path))
    assert len(structures) == 4
    for s, atoms in zip(structures, frames, strict=True):
        assert s.symbols == tuple(atoms.get_chemical_symbols())
        np.testing.assert_allclose(s.positions, atoms.positions, atol=1e-7)  # extxyz: %.8f
        np.testing.assert_allclose(s.cell, atoms.cell.array, atol=1e-7)
        assert s.pbc == tuple(atoms.pbc)
        assert s.energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(s.forces, atoms.get_forces(), atol=1e-7)
        assert_float64(s)
    np.testing.assert_allclose(
        structures[0].stress, voigt_6_to_full_3x3_stress(frames[0].get_stress()), rtol=1e-12
    )
    np.testing.assert_array_equal(structures[0].stress, structures[0].stress.T)
    assert structures[3].stress is None and not structures[3].cell.any()
    assert structures[3].pbc == (False, False, False)
    assert structures[2].source == "frames.extxyz:frame 2"
    assert [s.source for s in read_ase(path, index="1::2")] == [
        "frames.extxyz:frame 1",
        "frames.extxyz:frame 3",
    ]
    back = structures[0].to_atoms()
    np.testing.assert_allclose(back.get_stress(), frames[0].get_stress(), rtol=1e-12)


def test_ase_db(tmp_path):
    from ase.db import connect

    path = tmp_path / "frames.db"
    with connect(path) as db:
        db.write(labelled_atoms(seed=5))
    (s,) = read_ase(path)
    assert s.energy == pytest.approx(labelled_atoms(seed=5).get_potential_energy())
    assert s.stress.shape == (3, 3)


def test_ase_labels_from_info_and_arrays():
    atoms = Atoms("HO", positions=[[0, 0, 0], [0, 0, 1]])
    atoms.info["energy"] = -3.0
    atoms.info["stress"] = np.arange(9.0)
    atoms.arrays["forces"] = np.ones((2, 3))
    s = atoms_structure(atoms, "mem: frame 0")
    assert s.energy == -3.0 and s.forces.sum() == 6 and s.stress.shape == (3, 3)
    atoms.info["stress"] = np.zeros(5)
    with pytest.raises(DataError, match=r"mem: frame 0: stress has shape \(5,\)"):
        atoms_structure(atoms, "mem: frame 0")
    with pytest.raises(DataError, match=r"unknown atomic number\(s\) \[0\]"):
        atoms_structure(Atoms("X"), "mem: frame 0")


def test_ase_malformed(tmp_path):
    import ase.io

    path = tmp_path / "broken.extxyz"
    ase.io.write(path, [labelled_atoms(seed=0), labelled_atoms(seed=1)], format="extxyz")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n")  # the second frame loses two atoms
    structures = read_ase(path)
    assert next(structures).source == "broken.extxyz:frame 0"
    with pytest.raises(DataError, match=r"broken\.extxyz: frame 1: ASE cannot read it") as info:
        next(structures)
    assert str(path) in str(info.value)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("three\nnot a count\n")
    with pytest.raises(DataError, match=r"garbage\.xyz: frame 0: ASE cannot read it"):
        list(read_ase(garbage))
    nan = tmp_path / "nan.extxyz"
    nan.write_text('1\nProperties=species:S:1:pos:R:3 pbc="F F F"\nH nan 0.0 0.0\n')
    with pytest.raises(DataError, match=r"nan\.extxyz: frame 0: positions has non-finite"):
        list(read_ase(nan))
    with pytest.raises(FileNotFoundError, match="absent.xyz"):
        read_ase(tmp_path / "absent.xyz")
    empty = tmp_path / "empty.xyz"
    empty.touch()
    with pytest.raises(DataError, match=r"empty\.xyz: empty file"):
        read_ase(empty)


def test_water_extxyz_real():
    path = real_file("water/water_64_dft.extxyz")
    structures = list(read_ase(path, index=":10"))
    assert len(structures) == 10
    s = structures[0]
    assert s.formula == "H128O64" and s.pbc == (True, True, True)
    assert s.forces.shape == (192, 3) and s.energy == pytest.approx(-29943.142578125)
    np.testing.assert_allclose(np.diag(s.cell), 12.444661140441895)


# ---------------------------------------------------------------------------------------------
# Dispatcher


def test_detect_format_by_extension_and_content(tmp_path, ani1_file):
    import ase.io

    assert detect_format(ani1_file) == "ani1"
    assert detect_format(write_lines(tmp_path / "a.jsonl", [neuralil_line()])) == "neuralil"
    assert detect_format(write_md17(tmp_path / "a.npz")) == "md17"
    xyz = tmp_path / "a.xyz"
    ase.io.write(xyz, labelled_atoms())
    assert detect_format(xyz) == "ase"
    # Unknown extensions: by content.
    disguised = {
        "h5.dat": ani1_file.read_bytes(),
        "npz.bin": write_md17(tmp_path / "b.npz").read_bytes(),
        "jsonl.txt": (neuralil_line() + "\n").encode(),
        "xyz.txt": xyz.read_bytes(),
    }
    for name, content in disguised.items():
        (tmp_path / name).write_bytes(content)
    formats = {name: detect_format(tmp_path / name) for name in disguised}
    assert formats == {
        "h5.dat": "ani1",
        "npz.bin": "md17",
        "jsonl.txt": "neuralil",
        "xyz.txt": "ase",
    }
    assert len(list(read_structures(tmp_path / "h5.dat", fraction=0.5))) == 20 + 10 + 4


def test_read_structures_mixed_list(tmp_path, ani1_file):
    import ase.io

    xyz = tmp_path / "a.extxyz"
    ase.io.write(xyz, [labelled_atoms(seed=k) for k in range(2)])
    paths = [
        write_lines(tmp_path / "a.jsonl", [neuralil_line()]),
        write_md17(tmp_path / "a.npz", n=3),
        xyz,
        str(ani1_file),
    ]
    sources = [s.source.split(":")[0] for s in read_structures(paths)]
    assert sources == ["a.jsonl"] + ["a.npz"] * 3 + ["a.extxyz"] * 2 + ["mini.h5"] * 69
    assert len(list(read_structures(xyz, format="ase", index="-1"))) == 1
    assert len(list(read_structures(tmp_path / "a.jsonl", composition=EAN_COMPOSITION))) == 1
    with pytest.raises(DataError):  # an explicit format wins over the extension
        list(read_structures(xyz, format="neuralil"))


def test_read_structures_option_errors(tmp_path, ani1_file):
    jsonl = write_lines(tmp_path / "a.jsonl", [neuralil_line()])
    with pytest.raises(ValueError, match=r"option 'fraction' is not accepted by the neuralil"):
        read_structures([ani1_file, jsonl], fraction=0.5)  # raised before reading anything
    with pytest.raises(ValueError, match="option 'composition' is not accepted by the ani1"):
        read_structures(ani1_file, composition=EAN_COMPOSITION)
    with pytest.raises(ValueError, match="option 'index' is not accepted by the md17"):
        read_structures(write_md17(tmp_path / "a.npz"), index=0)
    with pytest.raises(ValueError, match="unknown format 'xyz'"):
        read_structures(jsonl, format="xyz")
    with pytest.raises(ValueError, match="no paths"):
        read_structures([])
    with pytest.raises(FileNotFoundError, match="lost.h5"):
        read_structures([jsonl, tmp_path / "lost.h5"])


def test_read_structures_molecules_across_files(tmp_path, ani1_file):
    other = write_ani1(tmp_path / "other.h5", {"s02/s02-0": ani1_molecule("CCHHHHHH", 7)})
    picked = list(read_structures([ani1_file, other], molecules=["s02/s02-0", "s01/s01-2"]))
    assert [s.group for s in picked] == ["s01/s01-2"] * 9 + ["s02/s02-0"] * 7
    with pytest.raises(ValueError, match=r"\['s03/s03-0'\] are in none of the files"):
        read_structures([ani1_file, other], molecules=["s03/s03-0"])


def test_read_structures_builtin(tmp_path, monkeypatch):
    import ase.io

    monkeypatch.setattr(readers_module, "BUILTIN", tmp_path / "builtin" / "ean_xtb.extxyz")
    with pytest.raises(FileNotFoundError, match="built-in data set is missing"):
        read_structures("builtin")
    readers_module.BUILTIN.parent.mkdir()
    ase.io.write(readers_module.BUILTIN, [labelled_atoms(seed=k) for k in range(2)])
    assert [s.source for s in read_structures("builtin")] == [
        "ean_xtb.extxyz:frame 0",
        "ean_xtb.extxyz:frame 1",
    ]


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, jat.data; print(sorted({'jax', 'h5py', 'ase.io'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
