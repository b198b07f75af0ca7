"""The QM9 reader: the xyz format (Fortran exponents, malformed input), directories and tar
archives, detection, the exclusion list, qm9pack's CSV files, units, the configuration and an
energy-only training run."""

from __future__ import annotations

import ast
import csv
import importlib.util
import itertools
import tarfile
import time

import numpy as np
import pytest
from ase.build import molecule

from jat.config import config_from_dict
from jat.data import DataError, Structure, detect_format, read_structures
from jat.data.qm9 import (
    CSV_COLUMNS,
    PROPERTY_KEYS,
    qm9pack_dir,
    read_exclusion_list,
    read_qm9,
)
from jat.training import train
from jat.training.data import read_files

# Explicit constants (CODATA 2018), independent of ase.units (which may use another CODATA set).
HARTREE_EV = 27.211386245988
DEBYE_EA = 0.20819433
BOHR_A = 0.529177210903
RTOL = 1e-7  # CODATA 2014 (ase's default) and 2018 differ by < 1e-8

# A CH4 entry of the QM9 distribution (gdb 1), with one coordinate in Fortran notation.
CH4_PROPS = [157.7118, 157.70997, 157.70699, 0.0, 13.21, -0.3877, 0.1171, 0.5048, 35.3641,
             0.044749, -40.47893, -40.476062, -40.475117, -40.498597, 6.469]  # fmt: skip
CH4_ATOMS = [
    ("C", "-0.0126981359", "1.0858041578", "0.0080009958", "-0.535689"),
    ("H", "0.002150416", "-0.0060313176", "0.0019761204", "0.133921"),
    ("H", "1.0117308433", "1.4637511618", "0.0002765748", "0.133922"),
    ("H", "-0.540815069", "1.4475266138", "-0.8766437152", "0.133923"),
    ("H", "-0.5238136345", "1.4379326443", "9.063972942*^-1", "0.133923"),
]
TRAILER = ["1341.307\t1341.3284\t1562.6731", "C\tC", "InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4"]


def xyz_text(index=1, atoms=CH4_ATOMS, props=CH4_PROPS, trailer=TRAILER, count=None) -> str:
    """A molecule in the QM9 xyz layout (tab separated, as the distribution)."""
    values = "\t".join(str(v) for v in props)
    lines = [str(len(atoms) if count is None else count), f"gdb {index}\t{values}\t"]
    lines += ["\t".join(a) for a in atoms]
    return "\n".join(lines + trailer) + "\n"


def random_entry(index: int, name: str = "CH4", seed: int = 0) -> str:
    """A QM9-layout molecule from ASE's geometry of ``name`` with made-up properties."""
    rng = np.random.default_rng(seed)
    atoms = molecule(name)
    atoms.rattle(0.02, seed=seed)
    charges = rng.normal(0.0, 0.3, len(atoms))
    rows = [
        (s, *(f"{x:.10f}" for x in p), f"{q:.6f}")
        for s, p, q in zip(atoms.get_chemical_symbols(), atoms.positions, charges, strict=True)
    ]
    props = [*rng.uniform(1.0, 10.0, 10), -40.0 * len(atoms) + rng.normal(), -1.0, -1.0, -1.0, 6.0]
    return xyz_text(index, rows, [float(v) for v in props])


def write_dir(root, entries) -> list:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, text in entries:
        path = root / f"dsgdb9nsd_{index:06d}.xyz"
        path.write_text(text)
        paths.append(path)
    return paths


@pytest.fixture
def qm9_dir(tmp_path):
    """Five molecules (gdb 1, 2, 3, 21725, 133885) in a directory, plus an unrelated file."""
    names = ["CH4", "NH3", "H2O", "CH3OH", "C2H6"]
    indices = [1, 2, 3, 21725, 133885]
    root = tmp_path / "qm9"
    entries = [(k, random_entry(k, n, seed=k)) for k, n in zip(indices, names, strict=True)]
    write_dir(root, entries)
    (root / "README").write_text("not a molecule\n")
    return root


# ---------------------------------------------------------------------------------------------
# One file: values and units


def test_single_file_values_and_units(tmp_path):
    path = tmp_path / "dsgdb9nsd_000001.xyz"
    path.write_text(xyz_text())
    (s,) = list(read_qm9(path))
    assert s.symbols == ("C", "H", "H", "H", "H") and s.pbc == (False, False, False)
    assert s.forces is None and s.stress is None
    assert s.group == "1" and s.source == "dsgdb9nsd_000001.xyz:gdb 1"
    assert s.positions[4, 2] == pytest.approx(0.9063972942, rel=1e-15)  # the *^ exponent
    assert s.positions[0, 1] == 1.0858041578
    assert s.energy == pytest.approx(-40.47893 * HARTREE_EV, rel=RTOL)
    p = s.properties
    assert set(p) == {*PROPERTY_KEYS, "mulliken_charges"}
    charges = [-0.535689, 0.133921, 0.133922, 0.133923, 0.133923]
    np.testing.assert_array_equal(p["mulliken_charges"], charges)
    assert (p["A"], p["B"], p["C"], p["Cv"]) == (157.7118, 157.70997, 157.70699, 6.469)
    assert p["mu"] == 0.0
    assert p["alpha"] == pytest.approx(13.21 * BOHR_A**3, rel=RTOL)
    assert p["r2"] == pytest.approx(35.3641 * BOHR_A**2, rel=RTOL)
    for key, value in zip(
        ("homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"),
        (-0.3877, 0.1171, 0.5048, 0.044749, -40.47893, -40.476062, -40.475117, -40.498597),
        strict=True,
    ):
        assert p[key] == pytest.approx(value * HARTREE_EV, rel=RTOL), key


def test_dipole_in_e_angstrom_and_fortran_properties(tmp_path):
    props = list(CH4_PROPS)
    props[3] = "1.6256"
    props[9] = "4.4749*^-2"
    path = tmp_path / "dsgdb9nsd_000002.xyz"
    path.write_text(xyz_text(2, props=props))
    (s,) = list(read_qm9(path))
    assert s.properties["mu"] == pytest.approx(1.6256 * DEBYE_EA, rel=RTOL)
    assert s.properties["zpve"] == pytest.approx(0.044749 * HARTREE_EV, rel=RTOL)


def test_other_readers_have_no_properties(tmp_path):
    s = Structure(("H",), np.zeros((1, 3)), np.zeros((3, 3)), (False, False, False))
    assert dict(s.properties) == {}
    assert dict(next(iter(read_structures("builtin"))).properties) == {}


# ---------------------------------------------------------------------------------------------
# Malformed input


def _bad(tmp_path, text, name="dsgdb9nsd_000007.xyz"):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as err:
        list(read_qm9(path))
    assert str(path) in str(err.value)
    return str(err.value)


def test_malformed_count_line(tmp_path):
    msg = _bad(tmp_path, "five\n" + xyz_text().split("\n", 1)[1])
    assert "line 1" in msg and "number of atoms" in msg and "'five'" in msg


def test_missing_property(tmp_path):
    msg = _bad(tmp_path, xyz_text(7, props=CH4_PROPS[:-1]))
    assert "gdb 7" in msg and "expected 15 properties" in msg and "got 14" in msg


def test_property_not_a_number(tmp_path):
    props = list(CH4_PROPS)
    props[10] = "-40.4*8"
    msg = _bad(tmp_path, xyz_text(7, props=props))
    assert "gdb 7" in msg and "property U0" in msg and "'-40.4*8'" in msg


def test_bad_element(tmp_path):
    atoms = list(CH4_ATOMS)
    atoms[2] = ("Xx", *atoms[2][1:])
    msg = _bad(tmp_path, xyz_text(7, atoms=atoms))
    assert "gdb 7" in msg and "Xx" in msg


def test_bad_atom_line(tmp_path):
    atoms = list(CH4_ATOMS)
    atoms[1] = atoms[1][:4]  # no charge column
    msg = _bad(tmp_path, xyz_text(7, atoms=atoms))
    assert "gdb 7" in msg and "line 4" in msg and "element x y z charge" in msg


def test_truncated_file(tmp_path):
    text = "\n".join(xyz_text(7).splitlines()[:5]) + "\n"
    msg = _bad(tmp_path, text)
    assert "gdb 7" in msg and "truncated" in msg


def test_count_larger_than_atoms(tmp_path):
    msg = _bad(tmp_path, xyz_text(7, count=6))
    assert "gdb 7" in msg


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "dsgdb9nsd_000001.xyz").write_text("")
    with pytest.raises(DataError, match="empty file"):
        read_qm9(tmp_path / "dsgdb9nsd_000001.xyz")
    with pytest.raises(FileNotFoundError):
        read_qm9(tmp_path / "nothing.xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no dsgdb9nsd_"):
        list(read_qm9(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------
# Directories, archives, detection


def _key(s):
    return (s.source.split(":")[-1], s.symbols, s.positions.tobytes(), s.energy)


def test_directory_in_name_order(qm9_dir):
    got = list(read_qm9(qm9_dir))
    assert [s.group for s in got] == ["1", "2", "3", "21725", "133885"]
    assert [s.formula for s in got] == ["CH4", "H3N", "H2O", "CH4O", "C2H6"]
    assert all(s.source.startswith("dsgdb9nsd_") for s in got)


@pytest.mark.parametrize("mode", ["w:bz2", "w:gz", "w"])
def test_tar_archive(qm9_dir, tmp_path, mode):
    suffix = {"w:bz2": ".tar.bz2", "w:gz": ".tar.gz", "w": ".tar"}[mode]
    archive = tmp_path / f"dsgdb9nsd.xyz{suffix}"
    with tarfile.open(archive, mode) as tar:
        for path in sorted(qm9_dir.glob("*.xyz")):
            tar.add(path, arcname=path.name)
    got = list(read_qm9(archive))
    want = list(read_qm9(qm9_dir))
    assert [_key(s) for s in got] == [_key(s) for s in want]
    assert got[0].source == f"{archive.name}:gdb 1"
    assert detect_format(archive) == "qm9"


def test_damaged_archive(qm9_dir, tmp_path):
    archive = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        for path in sorted(qm9_dir.glob("*.xyz")):
            tar.add(path, arcname=path.name)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="dsgdb9nsd.xyz.tar.bz2"):
        list(read_qm9(archive))
    bad = tmp_path / "broken.tar.bz2"
    bad.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="not a readable tar archive"):
        list(read_qm9(bad))


def test_error_inside_archive_names_member(tmp_path):
    src = tmp_path / "dsgdb9nsd_000009.xyz"
    src.write_text(xyz_text(9, props=CH4_PROPS[:3]))
    archive = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        tar.add(src, arcname=src.name)
    with pytest.raises(DataError) as err:
        list(read_qm9(archive))
    assert "dsgdb9nsd.xyz.tar.bz2: dsgdb9nsd_000009.xyz: gdb 9" in str(err.value)


def test_detection(qm9_dir, tmp_path):
    from ase.io import write

    assert detect_format(qm9_dir) == "qm9"
    assert detect_format(next(qm9_dir.glob("*.xyz"))) == "qm9"
    renamed = tmp_path / "methane.xyz"  # a QM9 molecule under another name: by content
    renamed.write_text(xyz_text())
    assert detect_format(renamed) == "qm9"
    plain = tmp_path / "plain.xyz"
    write(plain, molecule("CH4"))
    assert detect_format(plain) == "ase"
    csv_path = tmp_path / "qm9_part1.csv"
    csv_path.write_text("x\n")
    assert detect_format(csv_path) == "qm9"
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="without QM9 files"):
        detect_format(other)
    # through the dispatcher: a directory is read by the qm9 reader only
    assert len(list(read_structures(qm9_dir))) == 5
    assert len(list(read_structures([renamed, qm9_dir]))) == 6
    with pytest.raises(ValueError, match="only the qm9 format reads directories"):
        read_structures(qm9_dir, format="ase")
    with pytest.raises(ValueError, match="option 'exclude' is not accepted by the ase reader"):
        read_structures(plain, exclude=[1])


# ---------------------------------------------------------------------------------------------
# The exclusion list


UNCHARACTERIZED = """\
 3054 molecules failed the geometry consistency check: the relaxed structure differs
 from the one its GDB-17 SMILES describes (see the QM9 paper).

 Columns: index, GDB-17 SMILES, B3LYP SMILES, ...

 -------------------------------------------------------------------
    Index     SMILES GDB-17         SMILES B3LYP
 -------------------------------------------------------------------

     2      N                      N    0.1  0.2
  21725     C#CC1=CC=CN1           C#CC1=CC=C=N1    0.5   1.2
 133885     CC                     CC   0.0  0.0
 -------------------------------------------------------------------
"""


def test_exclusion_list(qm9_dir, tmp_path):
    path = tmp_path / "uncharacterized.txt"
    path.write_text(UNCHARACTERIZED)
    assert read_exclusion_list(path) == {2, 21725, 133885}
    kept = list(read_qm9(qm9_dir, exclude=path))
    assert [s.group for s in kept] == ["1", "3"]
    assert [s.group for s in read_qm9(qm9_dir, exclude=[1, 3])] == ["2", "21725", "133885"]
    plain = tmp_path / "plain.txt"
    plain.write_text("3\n1\n")
    assert read_exclusion_list(plain) == {1, 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("header\n 1 C\n junk line\n 2 N\n", "line 3: expected a molecule index first"),
        ("header\n 1 C\n 2 N\n 1 C\n", "molecule 1 is listed twice"),
        ("header only\n\n", "no molecule indices"),
        ("header\n 0 C\n", "line 2: molecule index 0 is not >= 1"),
    ],
)
def test_exclusion_list_errors(tmp_path, text, message):
    path = tmp_path / "uncharacterized.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_exclusion_list(path)
    assert str(path) in str(err.value)


def test_exclusion_argument_errors(qm9_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="exclusion list not found"):
        read_qm9(qm9_dir, exclude=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="integer molecule indices"):
        read_qm9(qm9_dir, exclude=[1.5])


def test_configuration_exclude(qm9_dir, tmp_path):
    path = tmp_path / "uncharacterized.txt"
    path.write_text(UNCHARACTERIZED)
    cfg = config_from_dict({"data": {"train": str(qm9_dir), "qm9": {"exclude": str(path)}}})
    assert cfg.data.qm9.exclude == str(path)
    assert [s.group for s in read_files([str(qm9_dir)], cfg)] == ["1", "3"]
    cfg = config_from_dict({"data": {"train": str(qm9_dir), "format": "qm9"}})
    assert cfg.data.qm9.exclude is None and len(read_files([str(qm9_dir)], cfg)) == 5


@pytest.mark.slow
def test_energy_only_training_on_u0(tmp_path):
    """U0 as the energy label trains with forces_weight 0 (the data have no forces)."""
    names = ["CH4", "NH3", "H2O", "CH3OH", "C2H6", "HCN", "H2CO", "C2H4"]
    entries = [(k + 1, random_entry(k + 1, names[k % 8], seed=k)) for k in range(16)]
    write_dir(tmp_path / "qm9", entries)
    cfg = config_from_dict(
        {
            "name": "qm9",
            "run_dir": str(tmp_path / "run"),
            "data": {"train": str(tmp_path / "qm9"), "split": {"validation": 4}},
            "model": {"name": "schnet", "cutoff": 3.0, "features": 8, "interactions": 1},
            "loss": {"forces_weight": 0.0, "energy_weight": 1.0},
            "training": {"epochs": 2, "batch_size": 4},
            "logging": {"progress": "none"},
        }
    )
    result = train(cfg)
    assert np.isfinite(result.summary["validation"]["energy_atom_mae"])


# ---------------------------------------------------------------------------------------------
# qm9pack's CSV layout: synthetic files, and the installed package


CSV_HEADER = ["XYZ_file", "Index", "SMILES", "InChi", "N_atoms", "Stoichiometry", "Elements",
              "XYZ_Ang", "Mulliken_pop", "Harmonic_Freq_cmi", *CSV_COLUMNS.values()]  # fmt: skip


def csv_row(index=1, elements="['C','H','H','H','H']", n=5, xyz=None, charges=None):
    xyz = (
        xyz or "[" + ",".join(f"[{a[1]},{a[2]},{a[3].replace('*^', 'E')}]" for a in CH4_ATOMS) + "]"
    )
    charges = charges or "[" + ",".join(a[4] for a in CH4_ATOMS) + "]"
    return [f"dsgdb9nsd_{index:06d}.xyz", str(index), "C", "InChI=1S/CH4/h1H4", str(n),
            "[4,1,0,0,0]", elements, xyz, charges, "[1341.307,1562.6731]",
            *(repr(v) for v in CH4_PROPS)]  # fmt: skip


def write_csv(path, rows, header=CSV_HEADER):
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_synthetic_csv_matches_xyz(tmp_path):
    path = write_csv(tmp_path / "qm9_part1.csv", [csv_row(1), csv_row(4)])
    got = list(read_qm9(path))
    xyz = tmp_path / "dsgdb9nsd_000001.xyz"
    xyz.write_text(xyz_text())
    (ref,) = list(read_qm9(xyz))
    assert [s.group for s in got] == ["1", "4"]
    assert got[0].source == "qm9_part1.csv:gdb 1"
    np.testing.assert_array_equal(got[0].positions, ref.positions)
    assert got[0].energy == ref.energy and got[0].symbols == ref.symbols
    for key in PROPERTY_KEYS:
        assert got[0].properties[key] == ref.properties[key], key
    np.testing.assert_array_equal(
        got[0].properties["mulliken_charges"], ref.properties["mulliken_charges"]
    )
    assert [s.group for s in read_qm9(path, exclude=[4])] == ["1"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (csv_row(n=4), "Elements lists 5 atoms, N_atoms is 4"),
        (csv_row(xyz="[[0,0,0]]"), "XYZ_Ang has 3 numbers, expected 15"),
        (csv_row(charges="[1,2,x,4,5]"), "Mulliken_pop holds something that is not a number"),
        (csv_row(elements="['C','H','H','H','Q']"), "unknown element symbol"),
        (csv_row()[:5], "5 columns"),
    ],
)
def test_csv_errors(tmp_path, row, message):
    path = write_csv(tmp_path / "qm9_part2.csv", [csv_row(1), row])
    with pytest.raises(DataError, match=message) as err:
        list(read_qm9(path))
    assert f"{path}: line 3" in str(err.value)


def test_csv_missing_column(tmp_path):
    header = [c for c in CSV_HEADER if c != "HOMO_au"]
    path = write_csv(tmp_path / "qm9_part1.csv", [], header)
    with pytest.raises(DataError, match=r"missing column\(s\) \['HOMO_au'\]"):
        list(read_qm9(path))


HAVE_QM9PACK = importlib.util.find_spec("qm9pack") is not None
needs_qm9pack = pytest.mark.skipif(
    not HAVE_QM9PACK, reason="qm9pack is not installed (pip install -e '.[qm9]')"
)


def _raw_rows(path, count):
    with path.open(newline="") as fh:
        rows = csv.DictReader(fh)
        return list(itertools.islice(rows, count))


@needs_qm9pack
def test_qm9pack_molecules_against_independent_conversion():
    path = qm9pack_dir() / "qm9_part2.csv"
    rows = _raw_rows(path, 4)
    got = list(itertools.islice(read_qm9(path), 4))
    for raw, s in zip(rows, got, strict=True):
        assert s.group == raw["Index"] and s.source == f"qm9_part2.csv:gdb {raw['Index']}"
        assert list(s.symbols) == ast.literal_eval(raw["Elements"])
        np.testing.assert_array_equal(s.positions, np.array(ast.literal_eval(raw["XYZ_Ang"])))
        np.testing.assert_array_equal(
            s.properties["mulliken_charges"], ast.literal_eval(raw["Mulliken_pop"])
        )
        assert s.energy == pytest.approx(float(raw["InternalEnergy_0K_au"]) * HARTREE_EV, rel=RTOL)
        p = s.properties
        assert p["mu"] == pytest.approx(float(raw["Dipole_debye"]) * DEBYE_EA, rel=RTOL)
        assert p["alpha"] == pytest.approx(float(raw["Polarizability_bohr3"]) * BOHR_A**3, rel=RTOL)
        assert p["r2"] == pytest.approx(float(raw["R2_bohr2"]) * BOHR_A**2, rel=RTOL)
        assert p["gap"] == pytest.approx(float(raw["HOMO_LUMO_gap_au"]) * HARTREE_EV, rel=RTOL)
        assert p["G"] == pytest.approx(float(raw["GibbsFreeEnergy_298K_au"]) * HARTREE_EV, rel=RTOL)
        assert p["A"] == float(raw["RotA_GHz"]) and p["Cv"] == float(
            raw["Heatcapacity_Cv_cal_mol_K"]
        )


@needs_qm9pack
def test_qm9pack_named_source_and_methane():
    first = next(iter(read_structures("qm9pack")))
    assert detect_format(qm9pack_dir()) == "qm9"
    assert first.group == "1" and first.formula == "CH4"
    assert first.energy == pytest.approx(-40.47893 * HARTREE_EV, rel=RTOL)
    assert first.properties["homo"] == pytest.approx(-0.3877 * HARTREE_EV, rel=RTOL)


@needs_qm9pack
@pytest.mark.slow
def test_qm9pack_reads_every_molecule_quickly():
    t0 = time.perf_counter()
    count, groups = 0, set()
    for s in read_qm9("qm9pack"):
        count += 1
        groups.add(s.group)
    elapsed = time.perf_counter() - t0
    assert count == len(groups) == 130_831  # 133 885 less the 3 054 uncharacterized
    assert elapsed < 120.0, f"{elapsed:.1f} s to read QM9"
