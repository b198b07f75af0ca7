"""``jat.Potential`` as an object: batching, energy reference, persistence, dtype and errors."""

from __future__ import annotations

import json

import flax
import jax
import numpy as np
import pytest
from ase import Atoms
from conftest import (
    CUTOFF,
    MODELS,
    SMALL,
    SPECIES,
    potential,
    random_crystal,
    random_molecule,
)

import jat
from jat.models import SchNet

# ---------------------------------------------------------------------------------------------
# 5. Batching pads atoms and edges without changing anything


def _assert_same(batch, single, rtol=1e-9):
    assert batch.energy == pytest.approx(single.energy, rel=rtol, abs=rtol)
    for name in ("energies", "forces", "stress"):
        a, b = getattr(batch, name), getattr(single, name)
        if b is None:
            assert a is None, name
        else:
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=name)


BATCHES = {
    "molecules": lambda: [random_molecule(9, seed=3), random_molecule(4, seed=21)],
    "crystals": lambda: [random_crystal(8, seed=4), random_crystal(4, seed=5, length=4.0)],
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", BATCHES)
def test_compute_batch_equals_compute(model, kind):
    pot = potential(model)
    structures = BATCHES[kind]()
    batch = pot.compute_batch(structures)
    assert len(batch) == len(structures)
    for atoms, res in zip(structures, batch, strict=True):
        assert len(res.energies) == len(atoms)
        _assert_same(res, pot.compute(atoms))


def test_compute_batch_edge_cases():
    pot = potential("schnet")
    assert pot.compute_batch([]) == []
    with pytest.raises(ValueError, match="pbc"):
        pot.compute_batch([random_molecule(4, seed=1), random_crystal(4, seed=1)])
    with pytest.raises(ValueError, match="periodic"):
        pot.compute_batch([random_molecule(4, seed=1)], stress=True)


# ---------------------------------------------------------------------------------------------
# Energy reference and the array interface


def test_energy_reference():
    pot = potential("jat")
    atoms = random_molecule(9, seed=3)
    base = pot.compute(atoms)
    shift, scale = np.array([-13.6, -1030.0, -1485.0, -2040.0]), np.array([0.5, 2.0, 3.0, 4.0])
    ref = pot.with_energy_reference(shift=shift, scale=scale)
    res = ref.compute(atoms)
    k = np.array([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
    np.testing.assert_allclose(res.energies, scale[k] * base.energies + shift[k], rtol=1e-12)
    assert res.energy == pytest.approx(res.energies.sum(), rel=1e-12)
    np.testing.assert_allclose(res.forces, ref.forces(atoms), rtol=1e-12)
    assert pot.compute(atoms).energy == base.energy  # the original is unchanged
    with pytest.raises(ValueError, match="one value per species"):
        pot.with_energy_reference(shift=[1.0, 2.0])


@pytest.mark.compile_group("schnet-crystal")
def test_array_interface_matches_atoms():
    pot = potential("schnet")
    atoms = random_crystal(8, seed=4)
    res = pot.compute(atoms)
    by_numbers = pot.compute(
        positions=atoms.positions, numbers=atoms.numbers, cell=atoms.cell[:], pbc=True
    )
    by_symbols = pot.compute(
        positions=atoms.positions, symbols=atoms.get_chemical_symbols(), cell=atoms.cell[:]
    )
    for other in (by_numbers, by_symbols):
        _assert_same(other, res, rtol=0)
    np.testing.assert_array_equal(pot.stress(atoms), res.stress)
    assert pot.energy(atoms) == pytest.approx(res.energy, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# 6. Save and load


def _energies(pot, atoms):
    return pot.compute(atoms, forces=False, stress=False).energies


@pytest.mark.parametrize("model", MODELS)
def test_save_load_round_trip(model, tmp_path):
    pot = potential(model).with_energy_reference(shift=[-1.0, -2.0, -3.0, -4.0], scale=[2.0] * 4)
    atoms = random_molecule(9, seed=3)
    pot.save(tmp_path / "pot")
    loaded = jat.Potential.load(tmp_path / "pot")
    assert (loaded.model, loaded.species, loaded.cutoff, loaded.dtype) == (
        model,
        SPECIES,
        pot.cutoff,
        "float64",
    )
    assert dict(loaded.model_kwargs) == dict(SMALL[model])
    np.testing.assert_array_equal(loaded.energy_shift, pot.energy_shift)
    np.testing.assert_array_equal(loaded.energy_scale, pot.energy_scale)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(pot.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(_energies(loaded, atoms), _energies(pot, atoms))


def test_metadata_is_readable_json(tmp_path):
    potential("jat").save(tmp_path / "pot")
    text = (tmp_path / "pot" / "metadata.json").read_text()
    assert "\n" in text.strip()  # indented, not one long line
    meta = json.loads(text)
    assert meta["format"] == "jat.Potential"
    assert isinstance(meta["format_version"], int) and meta["format_version"] >= 1
    assert meta["model"] == "jat" and meta["species"] == list(SPECIES)
    assert meta["cutoff"] == CUTOFF and meta["dtype"] == "float64"
    assert meta["model_kwargs"] == dict(SMALL["jat"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved float32 SchNet potential and the params file of a wider one."""
    root = tmp_path_factory.mktemp("saved")
    potential("schnet", "float32").save(root / "pot")
    potential("schnet", "float32", features=8).save(root / "narrow")
    return root


def _broken_copy(saved, tmp_path, params: bytes):
    target = tmp_path / "pot"
    target.mkdir()
    (target / "metadata.json").write_text((saved / "pot" / "metadata.json").read_text())
    (target / "params.msgpack").write_bytes(params)
    return target


@pytest.mark.parametrize("garbage", [b"", b"not msgpack at all \x00\xff\xc1", b"\x81\xa1a\x01"])
def test_load_corrupt_params(saved, tmp_path, garbage):
    target = _broken_copy(saved, tmp_path, garbage)
    with pytest.raises(ValueError, match="params.msgpack"):
        jat.Potential.load(target)


def test_load_wrong_shape_params(saved, tmp_path):
    target = _broken_copy(saved, tmp_path, (saved / "narrow" / "params.msgpack").read_bytes())
    with pytest.raises(ValueError, match=r"params\.msgpack.*shape"):
        jat.Potential.load(target)


def test_load_missing_or_bad_metadata(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        jat.Potential.load(tmp_path)
    target = _broken_copy(saved, tmp_path, (saved / "pot" / "params.msgpack").read_bytes())
    meta = target / "metadata.json"
    meta.write_text("{not json")
    with pytest.raises(ValueError, match="metadata.json"):
        jat.Potential.load(target)
    meta.write_text(json.dumps({"format": "something else", "format_version": 1}))
    with pytest.raises(ValueError, match="format"):
        jat.Potential.load(target)
    meta.write_text(json.dumps({"format": "jat.Potential", "format_version": 999}))
    with pytest.raises(ValueError, match="format_version"):
        jat.Potential.load(target)


def test_save_over_existing_potential(tmp_path, monkeypatch):
    atoms = random_molecule(9, seed=3)
    old, new = potential("schnet", "float32"), potential("schnet", "float32", features=8)
    target = tmp_path / "pot"
    old.save(target)
    new.save(target)  # replaces a complete potential with another complete one
    np.testing.assert_array_equal(
        _energies(jat.Potential.load(target), atoms), _energies(new, atoms)
    )

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(flax.serialization, "msgpack_serialize", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        old.save(target)  # a save that fails half-way ...
    monkeypatch.undo()
    # ... leaves the previous potential intact and no temporary directories behind.
    np.testing.assert_array_equal(
        _energies(jat.Potential.load(target), atoms), _energies(new, atoms)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pot"]


def test_custom_module_needs_module_on_load(tmp_path):
    module = SchNet(num_species=len(SPECIES), cutoff=CUTOFF, features=8, interactions=1)
    pot = jat.Potential.create(module, SPECIES, CUTOFF, seed=3)
    assert pot.model == "custom"
    pot.save(tmp_path / "pot")
    with pytest.raises(ValueError, match="module="):
        jat.Potential.load(tmp_path / "pot")
    loaded = jat.Potential.load(tmp_path / "pot", module=module)
    atoms = random_molecule(9, seed=3)
    np.testing.assert_array_equal(_energies(loaded, atoms), _energies(pot, atoms))


# ---------------------------------------------------------------------------------------------
# 7. dtype


@pytest.mark.compile_group("{model}-molecule")
@pytest.mark.parametrize("model", MODELS)
def test_float64_is_local_and_accurate(model):
    assert not jax.config.jax_enable_x64
    pot = potential(model, "float64")
    atoms = random_molecule(9, seed=3)
    res = pot.compute(atoms)
    assert not jax.config.jax_enable_x64, "float64 potential leaked jax_enable_x64"
    assert jax.numpy.zeros(1).dtype == np.float32
    assert res.forces.dtype == np.float64
    # A 1e-7 Å displacement changes the energy by −F·δ; float32 (eps ~ 1e-7) cannot resolve it.
    delta = 1e-7
    moved = atoms.copy()
    moved.positions[0, 0] += delta
    de = pot.energy(moved) - res.energy
    assert de == pytest.approx(-res.forces[0, 0] * delta, rel=1e-4)
    assert not jax.config.jax_enable_x64


@pytest.mark.compile_group("{model}-molecule")
@pytest.mark.parametrize("model", MODELS)
def test_float32_agrees_with_float64(model):
    pot64 = potential(model, "float64")
    pot32 = jat.Potential.create(model, SPECIES, CUTOFF, dtype="float32", **dict(SMALL[model]))
    pot32 = pot32.with_params(pot64.params)
    for atoms in (random_molecule(9, seed=3), random_crystal(8, seed=4)):
        r32, r64 = pot32.compute(atoms), pot64.compute(atoms)
        assert r32.energy == pytest.approx(r64.energy, rel=1e-5, abs=1e-5)
        scale = max(1.0, np.abs(r64.forces).max())
        np.testing.assert_allclose(r32.forces, r64.forces, rtol=0, atol=5e-5 * scale)
        if r64.stress is not None:
            np.testing.assert_allclose(r32.stress, r64.stress, rtol=0, atol=5e-5 * scale)


def test_unknown_dtype():
    with pytest.raises(ValueError, match="dtype"):
        jat.Potential.create("schnet", SPECIES, CUTOFF, dtype="float16")


# ---------------------------------------------------------------------------------------------
# 8. Errors


def test_unknown_element_names_atom_and_element():
    atoms = random_molecule(6, seed=32)
    atoms[4].symbol = "Fe"
    with pytest.raises(ValueError, match=r"atom 4 is Fe"):
        potential("schnet").compute(atoms)


def test_non_finite_positions():
    atoms = random_molecule(6, seed=33)
    atoms.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match="atom 2"):
        potential("schnet").compute(atoms)
    atoms.positions[2, 1] = np.inf
    with pytest.raises(ValueError, match="not finite"):
        potential("schnet").compute(atoms)


@pytest.mark.parametrize("pbc", [False, (True, True, False)])
def test_stress_needs_full_periodicity(pbc):
    atoms = random_crystal(4, seed=34)
    atoms.pbc = pbc
    pot = potential("schnet")
    with pytest.raises(ValueError, match="periodic"):
        pot.compute(atoms, stress=True)
    with pytest.raises(ValueError, match="periodic"):
        pot.stress(atoms)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        jat.Potential.create("mace", SPECIES, CUTOFF)
    with pytest.raises(ValueError, match="divisible"):
        jat.Potential.create("jat", SPECIES, CUTOFF, width=16, heads=3)
    with pytest.raises(ValueError, match="unknown norm"):
        jat.Potential.create("schnet", SPECIES, CUTOFF, norm="batchnorm")
    with pytest.raises(ValueError, match="unknown element"):
        jat.Potential.create("schnet", ["H", "Xx"], CUTOFF)
    with pytest.raises(ValueError, match="cutoff"):
        jat.Potential.create("schnet", SPECIES, 0.0)


def test_bad_structure_arguments():
    pot = potential("schnet")
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        pot.compute(positions=np.zeros((3, 2)), symbols=["H"] * 3)
    with pytest.raises(ValueError, match="species for"):
        pot.compute(positions=np.zeros((3, 3)), symbols=["H"] * 2)
    with pytest.raises(ValueError, match="numbers or symbols"):
        pot.compute(positions=np.zeros((3, 3)))


def test_isolated_atom_has_zero_force():
    res = potential("jat").compute(Atoms("O", positions=[[1.0, 2.0, 3.0]]))
    assert np.all(res.forces == 0.0) and np.isfinite(res.energy)


@pytest.mark.parametrize("model", MODELS)
def test_degenerate_structures(model):
    """An empty structure, a lone atom in a cell smaller than r_c (it sees its own images), and a
    slab whose free axis has a zero cell vector all evaluate to finite results."""
    pot = potential(model, "float32")
    empty = pot.compute(Atoms())
    assert empty.energy == 0.0 and empty.forces.shape == (0, 3)
    lone = pot.compute(Atoms("C", positions=[[0.3, 0.1, 0.2]], cell=[2.5, 2.6, 2.7], pbc=True))
    assert np.isfinite(lone.energy) and lone.stress.shape == (3, 3)
    np.testing.assert_allclose(lone.forces, 0.0, atol=1e-5)  # a Bravais lattice has no net force
    slab = Atoms("C4", positions=[[0, 0, 0], [1.2, 0.1, 0.3], [0.1, 1.3, 0.9], [1.3, 1.2, 1.5]],
                 cell=[[2.6, 0, 0], [0, 2.7, 0], [0, 0, 0]], pbc=[True, True, False])
    res = pot.compute(slab)
    assert np.isfinite(res.energy) and res.stress is None
    np.testing.assert_allclose(res.forces.sum(axis=0), 0.0, atol=1e-4)


def test_replaced_potential_does_not_reuse_stale_cache():
    """dataclasses.replace must not carry cached device constants over to the copy."""
    import dataclasses

    pot = potential("schnet", "float32")
    atoms = random_molecule(6, seed=3)
    e1 = pot.energy(atoms)
    doubled = dataclasses.replace(pot, energy_scale=pot.energy_scale * 2.0)
    np.testing.assert_allclose(doubled.energy(atoms), 2.0 * e1, rtol=1e-5)
