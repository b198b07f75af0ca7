"""Smoke runs of the MD examples and of ``benchmarks/md_step.py`` on the real EAN box with an
untrained model (each in its own process: the float64 runs switch JAX's x64 mode on), and of
``examples/active_learning.py --quick`` on the built-in GFN2-xTB box (it needs tblite)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jat.data import data_dir

REPO = Path(__file__).resolve().parents[1]
EAN = data_dir() / "ean" / "ean_15pairs_dft.jsonl"

needs_ean = pytest.mark.skipif(
    not EAN.is_file(), reason=f"EAN data not found at {EAN} (set JAT_DATA_DIR)"
)


def _run(args: list[str], cwd: Path) -> dict:
    out = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_ean
def test_nve_drift_both_engines(tmp_path):
    pytest.importorskip("jax_md")
    for engine in ("ase", "jax_md"):
        res = _run(
            [str(REPO / "examples" / "nve_drift.py"), "--untrained", "--engine", engine,
             "--time", "0.01", "--sample-every", "5", "--plot", str(tmp_path / f"{engine}.png")],
            tmp_path,
        )
        assert res["steps"] == 20
        for dtype in ("float32", "float64"):
            assert abs(res["results"][dtype]["drift_meV_per_atom_per_ps"]) < 1e3


@needs_ean
def test_nve_drift_guard_reports_its_first_flag_and_the_energy_jump(tmp_path):
    import jat

    com = jat.Potential.create("schnet", ("H", "C", "N", "O"), 5.0, members=2, features=8,
                               interactions=1)
    model = com.save(tmp_path / "committee")
    res = _run(
        [str(REPO / "examples" / "nve_drift.py"), "--model", str(model), "--dtypes", "float32",
         "--time", "0.005", "--sample-every", "5", "--guard", "1e-6",
         "--plot", str(tmp_path / "guard.png")],
        tmp_path,
    )["results"]["float32"]
    assert res["guard"]["time_ps"] == 0.0 and res["guard"]["events"] == 11  # every evaluation
    assert res["guard"]["force_std"] > 1e-6 and 0 <= res["guard"]["atom"] < 225
    assert "energy_jump_ps" in res
    sigma = res["force_std_max"]  # the largest per-atom σ over the samples
    assert sigma["start"] == pytest.approx(res["guard"]["force_std"], rel=1e-5)
    assert 0 < sigma["start"] <= sigma["largest"] and sigma["median"] <= sigma["largest"]
    assert 0.8 < res["closest_approach"]["A"] < 1.2  # an N–H or C–H bond of the EAN box
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "guard.png").stat().st_size > 0


@needs_ean
def test_md_ean_writes_trajectories(tmp_path):
    pytest.importorskip("jax_md")
    from ase.io import read

    subprocess.run(
        [sys.executable, str(REPO / "examples" / "md_ean.py"), "--untrained", "--steps", "10",
         "--interval", "5", "--out", str(tmp_path)],
        check=True, capture_output=True, timeout=600,
    )
    for name in ("ase_langevin.traj", "jax_md_nose_hoover.traj"):
        frames = read(tmp_path / name, ":")
        assert len(frames) >= 2 and len(frames[-1]) == 225
        assert frames[-1].get_potential_energy() == frames[-1].get_potential_energy()  # not NaN


@needs_ean
def test_bond_dissociation(tmp_path):
    res = _run(
        [str(REPO / "examples" / "bond_dissociation.py"), "--untrained", "--points", "5",
         "--out", str(tmp_path / "bond")],
        tmp_path,
    )
    assert (tmp_path / "bond.csv").is_file()
    assert res


@needs_ean
def test_md_step_quick(tmp_path):
    pytest.importorskip("jax_md")
    res = _run(
        [str(REPO / "benchmarks" / "md_step.py"), "--quick", "--models", "jat",
         "--out", str(tmp_path)],
        tmp_path,
    )
    rows = res["rows"]
    assert {r["path"] for r in rows} == {"bare", "ase", "jax_md"}
    assert all("error" not in r and r["ms_per_step"] > 0 for r in rows)
    assert "jat_225" in res["ratios"]


@pytest.mark.slow
def test_active_learning_quick(tmp_path):
    """One round end to end: train a committee, guarded NVT, label with GFN2-xTB, retrain."""
    pytest.importorskip("tblite", reason="active learning labels with GFN2-xTB: pip install tblite")
    from ase.io import read

    run = tmp_path / "al"
    res = _run([str(REPO / "examples" / "active_learning.py"), "--quick", "--run-dir", str(run)],
               tmp_path)
    rounds = res["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[0]["frames_added"] >= 1 and rounds[1]["frames_added"] == 0
    assert rounds[1]["train_frames"] == rounds[0]["train_frames"] + rounds[0]["frames_added"]
    for r in rounds:
        assert r["heldout_forces_mae"] > 0 and r["heldout_forces_std_mean"] > 0
        assert r["stable_time_ps"] >= 0
    lines = (run / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0, 1]
    train = read(run / "train.extxyz", ":")
    added = read(run / "round-0" / "added.extxyz", ":")
    assert len(train) == rounds[1]["train_frames"]
    for frame in added:  # GFN2-xTB labels of frames of the committee's MD
        assert frame.get_forces().shape == (45, 3) and frame.get_stress().shape == (6,)
        assert frame.info["max_force_std"] > 0
    if res["plot"] is not None:
        assert (run / "active_learning.png").is_file()


def test_active_learning_without_tblite_says_how_to_install(tmp_path):
    fake = tmp_path / "site" / "tblite"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no tblite here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "active_learning.py"), "--quick",
         "--run-dir", str(tmp_path / "al")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode != 0
    assert "pip install tblite" in out.stderr
    assert not (tmp_path / "al").exists()  # nothing written before the check
