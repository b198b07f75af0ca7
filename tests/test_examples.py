"""Smoke runs of the MD examples and of ``benchmarks/md_step.py`` on the real EAN box with an
untrained model (each in its own process: the float64 runs switch JAX's x64 mode on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jat.data import data_dir

REPO = Path(__file__).resolve().parents[1]
EAN = data_dir() / "ean" / "ean_15pairs_dft.jsonl"

pytestmark = pytest.mark.skipif(
    not EAN.is_file(), reason=f"EAN data not found at {EAN} (set JAT_DATA_DIR)"
)


def _run(args: list[str], cwd: Path) -> dict:
    out = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def test_bond_dissociation(tmp_path):
    res = _run(
        [str(REPO / "examples" / "bond_dissociation.py"), "--untrained", "--points", "5",
         "--out", str(tmp_path / "bond")],
        tmp_path,
    )
    assert (tmp_path / "bond.csv").is_file()
    assert res


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
