"""``jat.evaluation`` and ``python -m jat.evaluate``: errors against labels, per species, and
for committees the uncertainty figures and the σ calibration."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import write
from conftest import emt_labelled

import jat
from jat.data import read_structures
from jat.evaluate import main as evaluate_main
from jat.evaluation import (
    cross_fitted_coverage,
    error_metrics,
    evaluate,
    fit_calibration,
    per_structure_force_errors,
)

SPECIES = ("H", "C", "N", "O", "Cu")
SMALL = {"features": 8, "interactions": 1}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    frames = []
    for k in range(6):
        atoms = molecule(("CH4", "NH3", "H2O")[k % 3])
        atoms.rattle(0.05, seed=k)
        frames.append(emt_labelled(atoms))
    path = tmp_path_factory.mktemp("eval") / "mol.extxyz"
    write(path, frames)
    crystals = []
    for k in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=10 + k)
        crystals.append(emt_labelled(atoms))
    write(path.with_name("cu.extxyz"), crystals)
    return path


@functools.cache
def _committee() -> jat.Potential:
    members = [
        jat.Potential.create("schnet", SPECIES, 3.0, seed=s, dtype="float64", **SMALL)
        for s in range(3)
    ]
    return jat.Potential.committee(members)


def test_errors_match_a_direct_computation(data_file):
    pot = _committee().member(0)
    structures = list(read_structures([data_file, data_file.with_name("cu.extxyz")]))
    ev = evaluate(pot, structures, batch_size=4)
    m = error_metrics(ev)
    de, df, ds = [], [], []
    for s in structures:
        r = pot.compute(s.to_atoms())
        de.append(r.energy - s.energy)
        df.append(r.forces - s.forces)
        if s.stress is not None:
            ds.append(r.stress - s.stress)
    de, df = np.array(de), np.concatenate(df)
    assert m["structures"] == 9 and "uncertainty" not in m
    assert m["energy"]["mae"] == pytest.approx(np.mean(np.abs(de)), rel=1e-9)
    n = np.array([s.n_atoms for s in structures])
    assert m["energy_per_atom"]["rmse"] == pytest.approx(np.sqrt(np.mean((de / n) ** 2)),
                                                         rel=1e-9)
    assert m["forces"]["rmse"] == pytest.approx(np.sqrt(np.mean(df**2)), rel=1e-9)
    assert m["stress"]["mae"] == pytest.approx(np.mean(np.abs(ds)), rel=1e-9)
    assert set(m["forces_per_species"]) == {"H", "C", "N", "O", "Cu"}
    cu = np.concatenate([r.forces - s.forces for s, r in
                         ((s, pot.compute(s.to_atoms())) for s in structures[6:])])
    assert m["forces_per_species"]["Cu"]["mae"] == pytest.approx(np.mean(np.abs(cu)), rel=1e-9)


def test_committee_figures_and_calibration(data_file):
    from jat.uncertainty import LabelStatistics

    stats = LabelStatistics(energy_mean=0.0, energy_std=1.0, force_mean=0.5, force_std=0.5)
    com = _committee().with_label_statistics(stats)
    structures = list(read_structures(data_file))
    raw = evaluate(com, structures, calibrated=False)
    m = error_metrics(raw)
    unc = m["uncertainty"]
    for key in ("nll", "spearman_abs_error_vs_std", "coverage_1std", "coverage_2std",
                "miscalibration_area", "spearman_per_atom", "spearman_per_structure"):
        assert np.isfinite(unc["forces"][key]), key
    assert set(m["z_score"]) == {"spearman_energy", "spearman_forces_per_atom",
                                 "spearman_forces_per_structure"}
    cal = fit_calibration(raw, fitted_on="mol.extxyz")
    assert cal.method == "nll" and cal.forces > 0
    errors = (raw.forces - raw.forces_ref).ravel()
    assert cal.forces == pytest.approx(np.sqrt(np.mean((errors / raw.forces_std.ravel()) ** 2)))
    fitted = error_metrics(evaluate(com.with_calibration(cal), structures))["uncertainty"]
    assert fitted["forces"]["nll"] <= unc["forces"]["nll"] + 1e-12
    err_s, std_s = per_structure_force_errors(raw)
    assert err_s.shape == std_s.shape == (len(structures),)
    with pytest.raises(ValueError, match="committee"):
        fit_calibration(evaluate(com.member(1), structures))
    by_coverage = fit_calibration(raw, method="coverage")
    assert by_coverage.method == "coverage"
    calibrated = evaluate(com.with_calibration(by_coverage), structures)
    assert error_metrics(calibrated)["uncertainty"]["forces"]["coverage_1std"] == pytest.approx(
        0.683, abs=0.05
    )
    with pytest.raises(ValueError, match="calibration method"):
        fit_calibration(raw, method="isotonic")
    crossed = cross_fitted_coverage(raw, "coverage", folds=2)
    assert 0.0 <= crossed["coverage_1std"] <= crossed["coverage_2std"] <= 1.0
    assert 0.0 < crossed["factor_min"] <= crossed["factor_max"]
    with pytest.raises(ValueError, match="folds"):
        cross_fitted_coverage(raw, folds=len(structures) + 1)


def test_cli_reports_plots_and_calibrates(data_file, tmp_path, capsys):
    pot_dir = _committee().save(tmp_path / "committee")
    out = tmp_path / "eval"
    code = evaluate_main([str(pot_dir), str(data_file), "--out", str(out),
                          "--calibrate", str(tmp_path / "calibrated")])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads(printed[-1])
    assert metrics["structures"] == 6 and "uncertainty" in metrics
    assert metrics["calibration"]["method"] == "nll"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    back = jat.Potential.load(tmp_path / "calibrated")
    assert back.calibration.forces == pytest.approx(metrics["calibration"]["forces"])
    crossed = metrics["calibrated_uncertainty"]["forces_cross_fitted"]
    assert crossed["folds"] == 2 and 0.0 <= crossed["coverage_1std"] <= 1.0
    assert evaluate_main([str(pot_dir), str(data_file), "--out", str(out), "--no-plots",
                          "--calibrate", str(tmp_path / "by-coverage"),
                          "--calibration", "coverage"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["calibration"]["method"] == "coverage"
    assert jat.Potential.load(tmp_path / "by-coverage").calibration.method == "coverage"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "parity.png").stat().st_size > 0
    assert (out / "error_vs_std.png").stat().st_size > 0


def test_cli_names_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.extxyz"
    bad.write_text("2\nProperties=species:S:1:pos:R:3\nH 0 0 0\n")
    pot_dir = _committee().member(0).save(tmp_path / "single")
    assert evaluate_main([str(pot_dir), str(bad), "--no-plots"]) == 2
    assert "bad.extxyz" in capsys.readouterr().err
    assert evaluate_main([str(tmp_path / "missing"), str(bad)]) == 2
    assert evaluate_main([str(pot_dir), "--split", "test"]) == 2  # a potential, not a run
    assert "needs a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # DATA and --split together
        evaluate_main([str(pot_dir), str(bad), "--split", "test"])
    good = tmp_path / "good.extxyz"
    write(good, [emt_labelled(molecule("CH4"))])
    assert evaluate_main([str(pot_dir), str(good), "--calibrate", str(tmp_path / "c")]) == 2
    assert "committee" in capsys.readouterr().err


def test_explain_writes_per_atom_arrays(tmp_path):
    from ase.io import read

    from jat.evaluation import explain

    com = _committee()
    atoms = molecule("CH4")
    atoms.rattle(0.05, seed=1)
    out = explain(com, atoms)
    r = com.compute(atoms)
    np.testing.assert_allclose(out.arrays["energies"], r.energies)
    np.testing.assert_allclose(out.arrays["sensitivity"], np.linalg.norm(r.forces, axis=1))
    np.testing.assert_allclose(out.arrays["force_std"], np.linalg.norm(r.forces_std, axis=1))
    assert out.arrays["energies"].sum() == pytest.approx(r.energy)
    write(tmp_path / "x.extxyz", out)
    back = read(tmp_path / "x.extxyz")
    np.testing.assert_allclose(back.arrays["force_std"], out.arrays["force_std"])
    single = explain(com.member(0), atoms)
    assert "force_std" not in single.arrays
