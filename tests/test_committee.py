"""Committees: K parameter sets on one graph, their mean and σ in every evaluation path.

A committee's predictions must be the members' means and its σ their standard deviation, the
same in ``compute``, ``compute_batch``, the ASE calculator and JAX-MD (both lists); the σ is a
standard deviation (never a variance), calibrated by the stored factors unless asked not to;
a committee saves and loads; the MD guards stop or flag where the force σ passes a threshold.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from conftest import SPECIES, random_crystal, random_molecule

import jat
import jat.md
from jat.potential.files import PotentialFileError
from jat.uncertainty import (
    Calibration,
    Guard,
    UncertaintyError,
    calibration_factor,
    coverage,
    coverage_factor,
    gaussian_nll,
    miscalibration_area,
    nll_factor,
    spread,
)

pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types")
CUTOFF = 3.5
SMALL = {"width": 8, "layers": 1, "heads": 1}
RTOL = 1e-9


@functools.cache
def _members(k: int = 3) -> tuple[jat.Potential, ...]:
    rng = np.random.default_rng(11)
    out = []
    for seed in range(k):
        pot = jat.Potential.create("jat", SPECIES, CUTOFF, seed=seed, dtype="float64", **SMALL)
        out.append(pot.with_energy_reference(  # every member its own reference
            shift=rng.normal(-3.0, 1.0, len(SPECIES)), scale=rng.uniform(0.5, 2.0, len(SPECIES))
        ))
    return tuple(out)


@functools.cache
def _committee() -> jat.Potential:
    return jat.Potential.committee(_members())


def _crystal() -> Atoms:
    return random_crystal(12, seed=4, length=9.0)


def _reference(atoms):
    """Mean and σ over the members' own ``compute``, in float64 numpy."""
    rs = [m.compute(atoms) for m in _members()]
    out = {}
    for key in ("energy", "energies", "forces", "stress"):
        if getattr(rs[0], key) is not None:
            out[key] = spread(np.array([getattr(r, key) for r in rs]))
    return out


@pytest.mark.compile_group("committee")
@pytest.mark.parametrize("make", [_crystal, lambda: random_molecule(10, seed=2)],
                         ids=["crystal", "molecule"])
def test_compute_gives_the_members_mean_and_std(make):
    atoms = make()
    ref = _reference(atoms)
    com = _committee()
    r = com.compute(atoms, members=True)
    assert com.members == 3 and com.energy_shift.shape == (3, len(SPECIES))
    for key, (mean, std) in ref.items():
        np.testing.assert_allclose(getattr(r, key), mean, rtol=RTOL, atol=1e-10, err_msg=key)
        np.testing.assert_allclose(getattr(r, f"{key}_std"), std, rtol=RTOL, atol=1e-10,
                                   err_msg=key)
    assert r.members.energy.shape == (3,) and r.members.forces.shape == (3, len(atoms), 3)
    np.testing.assert_allclose(r.members.energy, [m.compute(atoms).energy for m in _members()],
                               rtol=RTOL)
    batch = com.compute_batch([atoms, atoms])[1]
    assert batch.members is None
    np.testing.assert_allclose(batch.forces_std, r.forces_std, rtol=RTOL, atol=1e-10)
    assert batch.energy_std == pytest.approx(r.energy_std, rel=RTOL)


def test_sigma_is_a_standard_deviation_not_a_variance():
    """Two members that differ only by a shift δ of one species' μ_Z: their energies differ by
    n_Z δ, so σ = n_Z δ / 2 exactly (the variance would be its square)."""
    base = _members()[0]
    shift = base.energy_shift.copy()
    shift[0] += 3.0  # H
    other = base.with_energy_reference(shift=shift)
    com = jat.Potential.committee([base, other])
    atoms = random_molecule(10, seed=2)
    n_h = atoms.get_chemical_symbols().count("H")
    assert n_h >= 2
    r = com.compute(atoms)
    assert r.energy_std == pytest.approx(n_h * 3.0 / 2, rel=1e-12)
    assert r.energy == pytest.approx(base.compute(atoms).energy + n_h * 3.0 / 2, rel=1e-12)
    np.testing.assert_allclose(r.forces_std, 0.0, atol=1e-12)  # a shift moves no force


@pytest.mark.compile_group("committee")
def test_calculator_and_jax_md_give_the_same_mean_and_std():
    atoms = _crystal()
    com = _committee()
    ref = com.compute(atoms)
    a = atoms.copy()
    a.calc = com.calculator(members=True)
    a.get_potential_energy()
    res = a.calc.results
    assert res["energy"] == pytest.approx(ref.energy, rel=RTOL)
    assert res["energy_std"] == pytest.approx(ref.energy_std, rel=RTOL)
    np.testing.assert_allclose(res["forces"], ref.forces, rtol=RTOL, atol=1e-10)
    np.testing.assert_allclose(res["forces_std"], ref.forces_std, rtol=RTOL, atol=1e-10)
    np.testing.assert_allclose(res["energies_std"], ref.energies_std, rtol=RTOL, atol=1e-10)
    voigt = np.array([ref.stress_std[i, j] for i, j in [(0, 0), (1, 1), (2, 2), (1, 2),
                                                        (0, 2), (0, 1)]])
    np.testing.assert_allclose(res["stress_std"], voigt, rtol=RTOL, atol=1e-12)
    assert res["forces_members"].shape == (3, len(atoms), 3)
    for neighbor_list in ("jat", "jax_md"):
        if neighbor_list == "jax_md":
            pytest.importorskip("jax_md")
        with jax.enable_x64(True):
            system = jat.md.jax_md_system(com, atoms, neighbor_list=neighbor_list)
            R = jnp.asarray(system.positions)
            nbrs = system.neighbor_fn.allocate(R)
            energy, grad = jax.jit(jax.value_and_grad(system.energy_fn))(R, neighbor=nbrs)
            fns = jat.md.jax_md_energy_fn(com, atoms.get_chemical_symbols(), system.box,
                                          neighbor_list=neighbor_list)
            u = jax.jit(fns.uncertainty_fn)(R, neighbor=nbrs)
        rot = system.rotation
        assert float(energy) == pytest.approx(ref.energy, rel=RTOL), neighbor_list
        np.testing.assert_allclose(-np.asarray(grad) @ rot, ref.forces, rtol=1e-7, atol=1e-9)
        assert float(u["energy_std"]) == pytest.approx(ref.energy_std, rel=1e-7)
        np.testing.assert_allclose(np.asarray(u["forces"]) @ rot, ref.forces, atol=1e-9)
        # σ per component depends on the frame; its per-atom norm does not
        np.testing.assert_allclose(
            np.asarray(u["atom_force_std"]), np.linalg.norm(ref.forces_std, axis=1), rtol=1e-6,
            err_msg=neighbor_list,
        )


def test_calibration_is_applied_by_default_and_raw_stays_available():
    com = _committee().with_calibration(Calibration(energy=3.0, forces=2.0, stress=4.0,
                                                    method="nll", fitted_on="test"))
    atoms = _crystal()
    raw = com.compute(atoms, calibrated=False)
    cal = com.compute(atoms)
    assert cal.energy_std == pytest.approx(3.0 * raw.energy_std)
    np.testing.assert_allclose(cal.forces_std, 2.0 * raw.forces_std)
    np.testing.assert_allclose(cal.stress_std, 4.0 * raw.stress_std)
    np.testing.assert_allclose(cal.forces, raw.forces)
    with pytest.raises(ValueError, match="committee"):
        _members()[0].with_calibration(Calibration(forces=2.0))
    with pytest.raises(ValueError, match="positive"):
        Calibration(forces=0.0)


def test_nll_factor_is_the_closed_form_minimum():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.1, 1.0, 20000)
    errors = rng.normal(0.0, 2.5 * sigma)
    s = nll_factor(errors, sigma)
    assert s == pytest.approx(2.5, rel=0.02)
    best = gaussian_nll(errors, s * sigma)
    for other in (0.8 * s, 0.95 * s, 1.05 * s, 1.25 * s):
        assert gaussian_nll(errors, other * sigma) > best
    assert coverage(errors, s * sigma) == pytest.approx(0.683, abs=0.02)
    assert coverage(errors, s * sigma, 2.0) == pytest.approx(0.954, abs=0.01)
    assert miscalibration_area(errors, s * sigma) < 0.02
    assert miscalibration_area(errors, sigma) > 0.2
    with pytest.raises(ValueError, match="no finite error"):
        nll_factor([1.0], [0.0])


def test_coverage_factor_holds_one_sigma_under_heavy_tails():
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.1, 1.0, 20000)
    gauss = rng.normal(0.0, 2.0 * sigma)
    assert coverage_factor(gauss, sigma) == pytest.approx(2.0, rel=0.03)  # Gaussian: as NLL
    heavy = 2.0 * sigma * rng.standard_t(2.5, sigma.size)  # Student t: heavy tails
    s_cov, s_nll = coverage_factor(heavy, sigma), nll_factor(heavy, sigma)
    assert coverage(heavy, s_cov * sigma) == pytest.approx(0.683, abs=0.005)
    assert coverage(heavy, s_nll * sigma) > 0.75  # NLL's factor is widened by the tails
    assert s_cov < s_nll
    assert calibration_factor(heavy, sigma, "coverage") == s_cov
    assert calibration_factor(heavy, sigma, "nll") == s_nll
    with pytest.raises(ValueError, match="calibration method"):
        calibration_factor(heavy, sigma, "isotonic")
    with pytest.raises(ValueError, match="level"):
        coverage_factor(heavy, sigma, level=1.0)
    assert Calibration(forces=1.5, method="coverage").method == "coverage"
    with pytest.raises(ValueError, match="calibration method"):
        Calibration(method="isotonic")


def test_create_members_save_and_load(tmp_path):
    com = jat.Potential.create("schnet", SPECIES, CUTOFF, seed=2, members=4, features=8,
                               interactions=1)
    assert com.members == 4 and com.n_members == 4
    leaves = jax.tree.leaves(com.params)
    assert all(x.shape[0] == 4 for x in leaves)
    assert not np.allclose(leaves[0][0], leaves[0][1])  # independent initialisations
    atoms = random_molecule(8, seed=3)
    r = com.compute(atoms, members=True)
    for k in range(4):  # member k alone gives the committee's k-th values
        np.testing.assert_allclose(com.member(k).compute(atoms).forces, r.members.forces[k],
                                   rtol=1e-5, atol=1e-6)
    assert r.energy_std > 0 and np.all(r.forces_std >= 0)

    cal = Calibration(energy=1.5, forces=0.7, method="nll", fitted_on="validation")
    com = jat.Potential.committee(_members()).with_calibration(cal)
    path = com.save(tmp_path / "committee")
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["members"] == 3 and np.shape(meta["energy_shift"]) == (3, len(SPECIES))
    back = jat.Potential.load(path)
    assert back.members == 3 and back.calibration == cal
    np.testing.assert_array_equal(back.energy_shift, com.energy_shift)
    a, b = back.compute(_crystal()), com.compute(_crystal())
    assert a.energy == pytest.approx(b.energy, rel=1e-12)
    np.testing.assert_allclose(a.forces_std, b.forces_std, rtol=1e-10)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"members": 1}, "members"),
        ({"members": "3"}, "members"),
        ({"members": 10**9}, "members"),
        ({"members": 2}, "energy_shift"),  # rows no longer match the member count
        ({"calibration": [1.0]}, "calibration"),
        ({"calibration": {"forces": -1.0}}, "calibration"),
        ({"calibration": {"forces": 1.0, "colour": 2}}, "calibration"),
    ],
)
def test_malformed_committee_metadata_names_the_field(tmp_path, change, field):
    path = jat.Potential.committee(_members()).save(tmp_path / "c")
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(change)
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(PotentialFileError, match=f"'{field}'"):
        jat.Potential.load(path)


def test_committee_refuses_mismatched_members():
    a = _members()[0]
    with pytest.raises(ValueError, match="at least 2"):
        jat.Potential.committee([a])
    b = jat.Potential.create("jat", SPECIES, 4.0, dtype="float64", **SMALL)
    with pytest.raises(ValueError, match="cutoff"):
        jat.Potential.committee([a, b])
    c = jat.Potential.create("jat", SPECIES, CUTOFF, dtype="float64", width=16, layers=1)
    with pytest.raises(ValueError, match="hyperparameters"):
        jat.Potential.committee([a, c])
    with pytest.raises(ValueError, match="members"):
        jat.Potential.create("jat", SPECIES, CUTOFF, members=1)
    with pytest.raises(TypeError, match="not a Potential"):
        jat.Potential.committee([a, "b"])
    nested = jat.Potential.committee([_committee(), a])  # members of members are flattened
    assert nested.members == 4


@pytest.mark.compile_group("committee")
def test_calculator_guard_stops_or_flags_at_the_most_uncertain_atom():
    com = _committee()
    atoms = _crystal()
    sigma = np.linalg.norm(com.compute(atoms).forces_std, axis=1)
    worst = int(np.argmax(sigma))
    a = atoms.copy()
    a.calc = com.calculator(guard=Guard(0.5 * sigma.max(), "stop"))
    with pytest.raises(UncertaintyError, match=f"step 0: .*atom {worst} ") as err:
        a.get_forces()
    assert err.value.atom == worst and err.value.value == pytest.approx(sigma.max(), rel=1e-9)
    a.calc = com.calculator(guard=Guard(0.5 * sigma.max(), "flag"))
    a.get_forces()
    a.positions[0] += 0.01
    a.get_forces()
    assert [e.step for e in a.calc.guard_events] == [0, 1]
    a.calc = com.calculator(guard=2.0 * sigma.max())
    a.get_forces()
    assert a.calc.guard_events == []
    with pytest.raises(ValueError, match="committee"):
        _members()[0].calculator(guard=1.0)
    with pytest.raises(ValueError, match="positive"):
        Guard(-1.0)


@pytest.mark.compile_group("committee")
def test_jax_md_guard_stops_the_chunk_where_sigma_passes():
    from ase import units
    from jax_md import simulate

    com = _committee()
    atoms = _crystal()
    with jax.enable_x64(True):
        system = jat.md.jax_md_system(com, atoms, neighbor_list="jat")
        R = jnp.asarray(system.positions)
        nbrs = system.neighbor_fn.allocate(R)
        fns = system  # an MDSystem carries the committee's uncertainty_fn
        sigma0 = float(jnp.max(fns.uncertainty_fn(R, neighbor=nbrs)["atom_force_std"]))
        init, apply = simulate.nve(system.energy_fn, system.shift_fn, dt=0.5 * units.fs)
        state = init(jax.random.PRNGKey(0), R, kT=300 * units.kB, mass=system.masses,
                     neighbor=nbrs)
        plain = jat.md.make_chunk(apply, 6)
        loose = jat.md.make_chunk(apply, 6, guard=100 * sigma0,
                                  uncertainty_fn=fns.uncertainty_fn, check_every=2)
        s1, _, _, _ = jat.md.run_chunk(plain, state, nbrs, system.neighbor_fn)
        s2, _, obs, _ = jat.md.run_chunk(loose, state, nbrs, system.neighbor_fn)
        np.testing.assert_allclose(np.asarray(s2.position), np.asarray(s1.position), atol=1e-12)
        assert int(obs.guard.checks) == 3 and not bool(obs.guard.hit)
        tight = jat.md.make_chunk(apply, 6, guard=Guard(0.5 * sigma0, "stop"),
                                  uncertainty_fn=fns.uncertainty_fn, check_every=2)
        with pytest.raises(UncertaintyError, match="step 101:") as err:
            jat.md.run_chunk(tight, state, nbrs, system.neighbor_fn, first_step=100)
        assert err.value.step == 101  # the first checked step (every 2nd: chunk step 1)
        flag = jat.md.make_chunk(apply, 6, guard=Guard(0.5 * sigma0, "flag"),
                                 uncertainty_fn=fns.uncertainty_fn, check_every=2)
        s3, _, obs, _ = jat.md.run_chunk(flag, state, nbrs, system.neighbor_fn)
        assert bool(obs.guard.hit) and int(obs.guard.step) == 1 and int(obs.guard.checks) == 3
        np.testing.assert_allclose(np.asarray(s3.position), np.asarray(s1.position), atol=1e-12)
        with pytest.raises(ValueError, match="uncertainty_fn"):
            jat.md.make_chunk(apply, 6, guard=1.0)


def test_welford_and_label_statistics_match_numpy():
    from jat.data import Structure
    from jat.uncertainty import Welford, label_statistics

    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 3.0, 1000)
    w = Welford()
    for part in np.array_split(values, 7):
        w.update(part)
    assert w.count == 1000
    assert w.mean == pytest.approx(values.mean()) and w.std == pytest.approx(values.std())
    shift = np.array([-1.0, -2.0, -3.0, -4.0])
    structures = []
    for k in range(5):
        atoms = random_molecule(6 + k, seed=k)
        structures.append(Structure(tuple(atoms.get_chemical_symbols()), atoms.positions,
                                    np.zeros((3, 3)), (False,) * 3, float(rng.normal(-20, 3)),
                                    rng.normal(size=(len(atoms), 3))))
    stats = label_statistics(iter(structures), shift, SPECIES)
    residual = [(s.energy - sum(shift[SPECIES.index(x)] for x in s.symbols)) / s.n_atoms
                for s in structures]
    norms = np.concatenate([np.linalg.norm(s.forces, axis=1) for s in structures])
    assert stats.energy_mean == pytest.approx(np.mean(residual))
    assert stats.energy_std == pytest.approx(np.std(residual))
    assert stats.force_mean == pytest.approx(norms.mean())
    assert stats.force_std == pytest.approx(norms.std())
    assert stats.structures == 5 and stats.atoms == sum(s.n_atoms for s in structures)


def test_z_scores_in_results_calculator_and_files(tmp_path):
    from jat.uncertainty import LabelStatistics

    stats = LabelStatistics(energy_mean=0.5, energy_std=2.0, force_mean=1.0, force_std=0.5,
                            structures=3, atoms=30)
    pot = _members()[0].with_label_statistics(stats)
    atoms = random_molecule(10, seed=2)
    r = pot.compute(atoms)
    species = np.array([SPECIES.index(x) for x in atoms.get_chemical_symbols()])
    residual = (r.energy - pot.energy_shift[species].sum()) / len(atoms)
    assert r.energy_z == pytest.approx((residual - 0.5) / 2.0)
    np.testing.assert_allclose(r.forces_z, (np.linalg.norm(r.forces, axis=1) - 1.0) / 0.5)
    a = atoms.copy()
    a.calc = pot.calculator()
    a.get_forces()
    assert a.calc.results["energy_z"] == pytest.approx(r.energy_z, rel=1e-9)
    np.testing.assert_allclose(a.calc.results["forces_z"], r.forces_z, rtol=1e-9)
    assert _members()[0].compute(atoms).energy_z is None
    nan_stats = LabelStatistics(energy_mean=float("nan"), energy_std=float("nan"),
                                force_mean=1.0, force_std=0.5)
    back = jat.Potential.load(pot.with_label_statistics(nan_stats).save(tmp_path / "p"))
    assert np.isnan(back.label_statistics.energy_mean) and back.label_statistics.force_std == 0.5
    com = jat.Potential.committee([pot, _members()[1]])
    assert com.label_statistics == stats and com.compute(atoms).forces_z is not None
