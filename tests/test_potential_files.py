"""Saving never destroys what is not a potential; loading treats the files as untrusted.

Regression tests of the reliability issue: ``Potential.save`` into a folder of the user's files,
onto a run directory or onto a file; ``examples/add_repulsion.py RUN RUN``; and malformed
``metadata.json`` / ``params.msgpack`` (wrong types, deep nesting, a huge ``layers``, NaN or
complex parameters), each a clear error naming the file and the field.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import potential, random_molecule

import jat
from jat.potential import PotentialFileError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("files") / "pot"
    potential("schnet", "float32").save(path)
    return path


def _copy(saved: Path, tmp_path: Path, meta: dict | str | None = None, params=None) -> Path:
    target = tmp_path / "copy"
    target.mkdir()
    text = (saved / "metadata.json").read_text() if meta is None else (
        meta if isinstance(meta, str) else json.dumps(meta)
    )
    (target / "metadata.json").write_text(text)
    (target / "params.msgpack").write_bytes(
        (saved / "params.msgpack").read_bytes() if params is None else params
    )
    return target


def _meta(saved: Path, **changes) -> dict:
    meta = json.loads((saved / "metadata.json").read_text())
    meta.update(changes)
    return meta


# ---------------------------------------------------------------------------------------------
# saving


def test_save_refuses_a_folder_of_user_files(tmp_path):
    pot = potential("schnet", "float32")
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    with pytest.raises(FileExistsError, match=r"not a jat potential \(chapter1\.tex\)"):
        pot.save(folder)
    assert (folder / "chapter1.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no leftovers
    pot.save(folder, overwrite=True)  # told to: replaced
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "params.msgpack"]


def test_save_refuses_a_potential_with_extra_files_and_a_file(tmp_path):
    pot = potential("schnet", "float32")
    target = tmp_path / "pot"
    pot.save(target)
    pot.save(target)  # a saved potential may be replaced
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="also notes.txt"):
        pot.save(target)
    afile = tmp_path / "model.bin"
    afile.write_bytes(b"\x00data")
    with pytest.raises(FileExistsError, match="is a file"):
        pot.save(afile)
    assert afile.read_bytes() == b"\x00data"
    empty = tmp_path / "empty"
    empty.mkdir()
    pot.save(empty)
    assert jat.Potential.load(empty).species == pot.species


def test_save_refuses_a_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="training run directory"):
        potential("schnet", "float32").save(run)
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_add_repulsion_onto_its_own_run_is_refused(tmp_path):
    run = tmp_path / "run"
    train = [sys.executable, "-m", "jat.train", f"run_dir={run}", "training.epochs=1",
             "model.layers=1", "model.width=8", "logging.progress=none"]
    subprocess.run(train, check=True, cwd=REPO, capture_output=True)
    before = sorted(p.name for p in run.iterdir())
    out = subprocess.run([sys.executable, "examples/add_repulsion.py", str(run), str(run)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "training run directory" in out.stderr
    assert sorted(p.name for p in run.iterdir()) == before
    jat.Potential.load(run)


# ---------------------------------------------------------------------------------------------
# loading untrusted files


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ("[1, 2, 3]", "expected a JSON object"),
        ('"just a string"', "expected a JSON object"),
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
        ({"format": "jat.Potential", "format_version": "1"}, "'format_version'"),
        ({"format": "jat.Potential", "format_version": None}, "'format_version'"),
        ({"format": "jat.Potential", "format_version": True}, "'format_version'"),
    ],
)
def test_malformed_metadata_names_the_file_and_field(saved, tmp_path, meta, field):
    target = _copy(saved, tmp_path, meta)
    with pytest.raises(PotentialFileError, match=rf"metadata\.json: .*{field}"):
        jat.Potential.load(target)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"species": "HCNO"}, "species"),
        ({"species": ["H", "Xx"]}, "species"),
        ({"cutoff": "5"}, "cutoff"),
        ({"cutoff": float("inf")}, "cutoff"),
        ({"dtype": "float16"}, "dtype"),
        ({"energy_shift": [0.0]}, "energy_shift"),
        ({"energy_scale": ["a", "b", "c", "d"]}, "energy_scale"),
        ({"model": ["schnet"]}, "model"),
        ({"model": "mace"}, "model"),
        ({"model_kwargs": [1, 2]}, "model_kwargs"),
        ({"model_kwargs": {"features": 0}}, "model_kwargs.*features"),
        ({"model_kwargs": {"interactions": 10**9}}, "model_kwargs.*interactions"),
        ({"model_kwargs": {"bogus": 1}}, "model_kwargs.*bogus"),
        ({"repulsion": [1]}, "repulsion"),
        ({"repulsion": {"kind": "lj"}}, "repulsion"),
        ({"num_params": -1}, "num_params"),
    ],
)
def test_bad_metadata_fields(saved, tmp_path, changes, field):
    target = _copy(saved, tmp_path, _meta(saved, **changes))
    start = time.perf_counter()
    with pytest.raises(PotentialFileError, match=rf"metadata\.json: entry .*{field}"):
        jat.Potential.load(target)
    assert time.perf_counter() - start < 20  # a huge model is refused before it is built


def _params_with(saved: Path, value_fn) -> bytes:
    from flax import serialization

    raw = serialization.msgpack_restore((saved / "params.msgpack").read_bytes())

    def first_leaf(tree):
        key = sorted(tree)[0]
        if isinstance(tree[key], dict):
            first_leaf(tree[key])
        else:
            tree[key] = value_fn(np.asarray(tree[key]))

    first_leaf(raw)
    return serialization.msgpack_serialize(raw)


@pytest.mark.parametrize(
    ("value_fn", "problem"),
    [
        (lambda a: np.full_like(a, np.nan), "NaN or infinite"),
        (lambda a: np.full_like(a, np.inf), "NaN or infinite"),
        (lambda a: a.astype(np.complex64), "dtype complex64"),
        (lambda a: a.astype(np.int32), "dtype int32"),
    ],
)
def test_bad_parameter_values(saved, tmp_path, value_fn, problem):
    target = _copy(saved, tmp_path, params=_params_with(saved, value_fn))
    with pytest.raises(PotentialFileError, match=rf"params\.msgpack: parameter \S+ .*{problem}"):
        jat.Potential.load(target)


def test_good_copy_loads_and_evaluates(saved, tmp_path):
    target = _copy(saved, tmp_path)
    pot = jat.Potential.load(target)
    ref = potential("schnet", "float32")
    atoms = random_molecule(6, seed=2)
    assert pot.compute(atoms).energy == pytest.approx(ref.compute(atoms).energy, rel=1e-6)
