"""The ZBL short-range repulsion: its formula, smooth switch-off, per-atom split and padding, and a
potential carrying it through every evaluation path (compute, calculator, JAX-MD, training)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.data import covalent_radii
from ase.io import read
from conftest import SPECIES, random_crystal

import jat
import jat.md
from jat.config import ConfigError, config_from_dict
from jat.models import ZBL
from jat.models.repulsion import make_repulsion, shortest_distances
from jat.training import train

NUMBERS = (1, 6, 7, 8)


def _zbl_reference(r, za, zb, r_ab):
    """The ZBL pair energy written out independently in numpy (eV), with the p = 6 envelope."""
    a = 0.8854 * 0.529177210903 / (za**0.23 + zb**0.23)
    x = r / a
    phi = (
        0.18175 * np.exp(-3.19980 * x)
        + 0.50986 * np.exp(-0.94229 * x)
        + 0.28022 * np.exp(-0.40290 * x)
        + 0.02817 * np.exp(-0.20162 * x)
    )
    d = r / r_ab
    u = 1 - 28 * d**6 + 48 * d**7 - 21 * d**8
    return np.where(r < r_ab, 14.399645 * za * zb / r * phi * u, 0.0)


def test_pair_energy_matches_formula_and_switches_off_smoothly(x64):
    zbl = ZBL(NUMBERS, cutoff=5.0)
    r_nh = 0.8 * (covalent_radii[7] + covalent_radii[1])
    assert zbl.pair_radii[2, 0] == pytest.approx(r_nh)
    r = np.linspace(0.1, 1.2, 111)
    v = np.asarray(zbl.pair_energy(jnp.asarray(r), jnp.asarray(7), jnp.asarray(1), r_nh))
    np.testing.assert_allclose(v, _zbl_reference(r, 7, 1, r_nh), rtol=2e-4, atol=1e-12)
    assert v[0] > 300 and np.all(v[r >= r_nh] == 0)  # a wall inside, nothing outside
    dv = jax.grad(lambda x: zbl.pair_energy(x, jnp.asarray(7), jnp.asarray(1), r_nh))
    assert abs(float(dv(r_nh - 1e-6))) < 1e-8  # the force also vanishes at the switch-off
    assert float(dv(0.5)) < 0  # repulsive


def test_radii_capped_by_cutoff_and_options_checked():
    zbl = make_repulsion({"kind": "zbl", "radius_scale": 3.0}, ["Cs", "I"], cutoff=4.0)
    assert zbl.pair_radii.max() == 4.0
    assert make_repulsion(None, ["H"], 3.0) is None
    assert make_repulsion("none", ["H"], 3.0) is None
    with pytest.raises(ValueError, match="unknown repulsion 'lj'"):
        make_repulsion("lj", ["H"], 3.0)
    with pytest.raises(ValueError, match="unknown ZBL option"):
        make_repulsion({"kind": "zbl", "radius": 1.0}, ["H"], 3.0)
    with pytest.raises(ValueError, match="radius_scale must be positive"):
        ZBL((1,), 3.0, radius_scale=0.0)


def test_atomic_energies_split_pairs_and_ignore_padding(x64):
    zbl = ZBL(NUMBERS, cutoff=5.0)
    # H2 at 0.3 Å and a distant O: one pair inside its switch-off radius.
    pos = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [3.0, 0.0, 0.0]])
    species = np.array([0, 0, 3])
    s, r = np.array([1, 0, 2, 0]), np.array([0, 1, 0, 2])  # sorted by receiver
    vec = pos[s] - pos[r]
    e = np.asarray(zbl.atomic_energies(jnp.asarray(species), vec, s, r, np.ones(4, bool)))
    v = _zbl_reference(0.3, 1, 1, zbl.pair_radii[0, 0])
    np.testing.assert_allclose(e, [v / 2, v / 2, 0.0], rtol=2e-4)
    # padded atoms (species -1) and padded edges (mask False, pointing at atom N) change nothing
    species_p = np.array([0, 0, 3, -1, -1])
    s_p = np.concatenate([s, [5, 5]])
    r_p = np.concatenate([r, [5, 5]])
    vec_p = np.concatenate([vec, np.zeros((2, 3))])
    mask_p = np.array([True] * 4 + [False] * 2)
    e_p = np.asarray(zbl.atomic_energies(jnp.asarray(species_p), vec_p, s_p, r_p, mask_p))
    np.testing.assert_allclose(e_p[:3], e, rtol=1e-12)
    assert np.all(e_p[3:] == 0)


@pytest.fixture(scope="module")
def pots():
    plain = jat.Potential.create("schnet", SPECIES, 3.5, seed=1, dtype="float64",
                                 features=8, interactions=1)
    return plain, plain.with_repulsion("zbl")


def _close_pair_crystal():
    atoms = random_crystal(12, seed=4, length=6.0)
    atoms.symbols[0], atoms.symbols[1] = "N", "H"
    d = atoms.positions[1] - atoms.positions[0]
    atoms.positions[1] = atoms.positions[0] + 0.55 * d / np.linalg.norm(d)
    return atoms


def test_potential_adds_the_pair_term_everywhere(pots, x64):
    plain, pot = pots
    atoms = _close_pair_crystal()
    zbl = pot.repulsion
    v = _zbl_reference(0.55, 7, 1, zbl.pair_radii[2, 0])
    res, base = pot.compute(atoms), plain.compute(atoms)
    assert res.energy - base.energy == pytest.approx(v, rel=2e-4)
    assert res.energies[0] - base.energies[0] == pytest.approx(v / 2, rel=2e-4)
    # forces are −∇E: central finite differences on the close pair's H
    h = 1e-5
    for k in range(3):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[1, k] += h
        minus.positions[1, k] -= h
        fd = -(pot.compute(plus, forces=False).energy - pot.compute(minus, forces=False).energy)
        assert res.forces[1, k] == pytest.approx(fd / (2 * h), rel=1e-6, abs=1e-6)
    # the ASE calculator and the JAX-MD energy function see the same term
    atoms.calc = pot.calculator(dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(res.energy, rel=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), res.forces, atol=1e-9)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), res.stress, atol=1e-9)
    system = jat.md.jax_md_system(pot, atoms, neighbor_list="jat")  # a small, skewed cell
    R = jnp.asarray(system.positions)
    nbrs = system.neighbor_fn.allocate(R)
    energy, grad = jax.value_and_grad(system.energy_fn)(R, neighbor=nbrs)
    assert float(energy) == pytest.approx(res.energy, rel=1e-10)
    np.testing.assert_allclose(-np.asarray(grad) @ system.rotation, res.forces, atol=1e-9)


def test_repulsion_is_saved_and_loaded(pots, tmp_path):
    _, pot = pots
    pot.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "metadata.json").read_text())
    assert meta["repulsion"] == {"kind": "zbl", "radius_scale": 0.8}
    assert jat.Potential.load(tmp_path / "p").repulsion == pot.repulsion
    radii = [[None, 0.9, 1.0, None], [0.9] + [None] * 3, [1.0] + [None] * 3, [None] * 4]
    pot.with_repulsion({"kind": "zbl", "radii": radii}).save(tmp_path / "q")
    loaded = jat.Potential.load(tmp_path / "q").repulsion
    assert loaded.pair_radii[0, 1] == 0.9 and loaded.pair_radii[0, 2] == 1.0
    assert loaded.pair_radii[3, 3] == pot.repulsion.pair_radii[3, 3]
    meta["repulsion"] = {"kind": "morse"}
    (tmp_path / "p" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"metadata.json: entry 'repulsion': unknown repulsion"):
        jat.Potential.load(tmp_path / "p")
    del meta["repulsion"]  # potentials saved before the option existed have none
    (tmp_path / "p" / "metadata.json").write_text(json.dumps(meta))
    assert jat.Potential.load(tmp_path / "p").repulsion is None


def test_config_option(tmp_path):
    base = {"data": {"train": "x.extxyz"}, "model": {"name": "schnet"}}
    cfg = config_from_dict({**base, "model": {"name": "schnet", "repulsion": "zbl"}})
    assert cfg.model.repulsion == "zbl" and cfg.model.repulsion_radius_scale == 0.8
    assert config_from_dict(base).model.repulsion == "none"
    with pytest.raises(ConfigError, match="model.repulsion"):
        config_from_dict({**base, "model": {"name": "schnet", "repulsion": "lj"}})


@pytest.fixture(scope="module")
def nh3_file(tmp_path_factory):
    """Eight EMT-labelled, distorted NH3 molecules."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(8):
        atoms = Atoms("NH3", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
        atoms.positions += rng.normal(scale=0.05, size=(4, 3))
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        frames.append(atoms)
    path = tmp_path_factory.mktemp("nh3") / "nh3.extxyz"
    write(path, frames)
    return path


def _train(path, run_dir, **model):
    cfg = config_from_dict({
        "name": "t",
        "run_dir": str(run_dir),
        "data": {"train": str(path), "split": {"validation": 2}},
        "model": {"name": "schnet", "cutoff": 3.0, "features": 8, "interactions": 1, **model},
        "training": {"epochs": 2, "batch_size": 2},
        "logging": {"progress": "none"},
    })
    return jat.Potential.load(train(cfg).run_dir)


def test_training_with_covalent_radii(nh3_file, tmp_path):
    """A run trains the network under the term and saves a potential that carries it."""
    pot = _train(nh3_file, tmp_path / "run", repulsion="zbl", repulsion_radii="covalent",
                 repulsion_radius_scale=1.2)
    assert pot.species == ("H", "N")
    assert pot.repulsion == ZBL((1, 7), 3.0, radius_scale=1.2)
    # at 1.2 × (0.71 + 0.31) Å the N–H term is active at 1.0 Å: part of what the network fits
    atoms = read(nh3_file, index=0)
    e_rep = float(np.sum(pot.repulsion.atomic_energies(jnp.asarray([1, 0, 0, 0]), *_edges(atoms))))
    assert e_rep > 0.01
    plain = pot.with_repulsion(None)
    assert pot.energy(atoms) - plain.energy(atoms) == pytest.approx(e_rep, rel=1e-5)


def test_training_with_data_radii_walls_off_only_unseen_distances(nh3_file, tmp_path):
    """Default radii: each pair's shortest training distance, so the term is zero on every
    training structure and the network trains exactly as without it."""
    pot = _train(nh3_file, tmp_path / "zbl", repulsion="zbl")
    plain = _train(nh3_file, tmp_path / "plain")
    split = json.loads((tmp_path / "zbl" / "split.json").read_text())
    frames = read(nh3_file, index=":")
    train_frames = [frames[int(src.rsplit(" ", 1)[-1])] for src in split["train"]]
    expected = shortest_distances(train_frames, ["H", "N"], 3.0)
    assert np.isnan(expected[1, 1])  # one N per molecule: N–N falls back to the covalent rule
    expected[1, 1] = 0.8 * 2 * covalent_radii[7]
    np.testing.assert_allclose(pot.repulsion.pair_radii, expected, rtol=2e-6)
    for atoms in frames:
        e_rep = pot.repulsion.atomic_energies(jnp.asarray([1, 0, 0, 0]), *_edges(atoms))
        if atoms in train_frames:
            assert np.all(np.asarray(e_rep) == 0)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        pot.params, plain.params,
    )
    squeezed = frames[0].copy()
    squeezed.positions[1] = 0.5 * squeezed.positions[1]  # N–H at ~0.5 Å
    assert pot.energy(squeezed) > plain.energy(squeezed) + 1.0


def test_add_repulsion_example(nh3_file, tmp_path):
    """``examples/add_repulsion.py`` gives a run trained without the term the one training with
    ``model.repulsion: zbl`` would have given it, parameters untouched."""
    import subprocess
    import sys
    from pathlib import Path

    plain = _train(nh3_file, tmp_path / "run")
    script = Path(__file__).resolve().parents[1] / "examples" / "add_repulsion.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "zbl")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["max_change_eV"] == 0.0
    pot = jat.Potential.load(tmp_path / "zbl")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    frames = read(nh3_file, index=":")
    train_frames = [frames[int(src.rsplit(" ", 1)[-1])] for src in split["train"]]
    expected = shortest_distances(train_frames, ["H", "N"], 3.0)
    np.testing.assert_allclose(pot.repulsion.pair_radii[0, :], expected[0, :], rtol=2e-6)
    jax.tree.map(np.testing.assert_array_equal, pot.params, plain.params)
    again = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "zbl"), str(tmp_path / "x")],
        capture_output=True, text=True, timeout=600,
    )
    assert again.returncode != 0 and "already has a repulsion" in again.stderr


def test_shortest_distances_periodic():
    atoms = Atoms("HO", positions=[[0.2, 0, 0], [3.6, 0, 0]], cell=np.eye(3) * 4.0, pbc=True)
    r = shortest_distances([atoms], ["H", "O"], 3.0)
    assert r[0, 1] == r[1, 0] == pytest.approx(0.6)  # through the periodic boundary
    assert np.isnan(r[0, 0])  # its own images are 4 Å away, beyond the cutoff
    zbl = make_repulsion({"kind": "zbl", "radii": [[None, 0.6], [0.6, None]]}, ["H", "O"], 3.0)
    assert zbl.pair_radii[0, 1] == 0.6
    assert zbl.pair_radii[0, 0] == pytest.approx(0.8 * 2 * covalent_radii[1])
    with pytest.raises(ValueError, match="symmetric"):
        make_repulsion({"kind": "zbl", "radii": [[None, 0.6], [0.7, None]]}, ["H", "O"], 3.0)


def _edges(atoms):
    n = len(atoms)
    r, s = np.nonzero(~np.eye(n, dtype=bool))  # receivers sorted
    vec = (atoms.positions[s] - atoms.positions[r]).astype(np.float32)
    return vec, s, r, np.ones(len(s), bool)
