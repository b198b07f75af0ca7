"""Physics of the models through ``jat.Potential``: symmetries, extensivity, derivatives,
smoothness at the cutoff and padding, for JAT and SchNet with random parameters."""

from __future__ import annotations

import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.neighborlist import neighbor_list
from ase.stress import full_3x3_to_voigt_6_stress
from conftest import (
    CUTOFF,
    EAN_CUTOFF,
    MODELS,
    SMALL,
    SPECIES,
    potential,
    random_crystal,
    random_molecule,
    random_rotation,
)

import jat
from jat.models import MODELS as MODEL_CLASSES
from jat.models.blocks import edge_lengths, segment_sum

RTOL = {"float32": 2e-4, "float64": 1e-9}


def assert_close(actual, expected, rtol, what=""):
    """|actual − expected| ≤ rtol · max(1, max|expected|), elementwise."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    assert actual.shape == expected.shape, what
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:.1g} × {scale:.3g}"


def assert_results_close(new, ref, rtol, rotation=None, perm=None):
    """``new`` equals ``ref`` transformed: atoms reordered by ``perm``, vectors rotated."""
    rot = np.eye(3) if rotation is None else rotation
    idx = slice(None) if perm is None else perm
    assert_close(new.energy, ref.energy, rtol, "energy")
    assert_close(new.energies, ref.energies[idx], rtol, "energies")
    assert_close(new.forces, ref.forces[idx] @ rot.T, rtol, "forces")
    if ref.stress is not None:
        assert_close(new.stress, rot @ ref.stress @ rot.T, rtol, "stress")


# ---------------------------------------------------------------------------------------------
# 1. Invariances


def _translate(atoms, rng):
    atoms.translate(rng.uniform(-7.0, 7.0, 3))
    return atoms, None, None


def _rotate(atoms, rng):
    rot = random_rotation(int(rng.integers(1 << 30)))
    atoms.set_cell(atoms.cell[:] @ rot.T, scale_atoms=False)
    atoms.positions = atoms.positions @ rot.T
    return atoms, rot, None


def _permute(atoms, rng):
    perm = rng.permutation(len(atoms))
    return atoms[perm], None, perm


def _wrap(atoms, rng):
    atoms.positions += 0.6 * atoms.cell.sum(axis=0)  # push some atoms out of the cell first
    atoms.wrap()
    return atoms, None, None


def _lattice_shift(atoms, rng):
    for k in rng.choice(len(atoms), size=3, replace=False):
        atoms.positions[k] += rng.integers(-2, 3, 3) @ atoms.cell[:]
    return atoms, None, None


TRANSFORMS = {
    "translate": _translate,
    "rotate": _rotate,
    "permute": _permute,
    "wrap": _wrap,
    "lattice_shift": _lattice_shift,
}
PERIODIC_ONLY = ("wrap", "lattice_shift")
INVARIANCE_CASES = [
    (system, transform)
    for system in ("molecule", "crystal", "ean")
    for transform in TRANSFORMS
    if system != "molecule" or transform not in PERIODIC_ONLY
]


def _system(name, request):
    """(potential dtype, cutoff, atoms) for a named test system."""
    if name == "molecule":
        return "float64", CUTOFF, random_molecule(9, seed=3)
    if name == "crystal":
        return "float64", CUTOFF, random_crystal(8, seed=4)
    return "float32", EAN_CUTOFF, request.getfixturevalue("ean_atoms").copy()


@pytest.mark.compile_group("{model}-{system}")
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("system", "transform"), INVARIANCE_CASES)
def test_invariance(model, system, transform, request):
    dtype, cutoff, atoms = _system(system, request)
    pot = potential(model, dtype, cutoff)
    ref = pot.compute(atoms)
    assert np.all(np.isfinite(ref.forces)) and np.ptp(ref.energies) > 0
    rng = np.random.default_rng(zlib.crc32(f"{system}/{transform}".encode()))
    new_atoms, rot, perm = TRANSFORMS[transform](atoms.copy(), rng)
    assert_results_close(pot.compute(new_atoms), ref, RTOL[dtype], rot, perm)


# ---------------------------------------------------------------------------------------------
# 2. Extensivity


def _check_supercell(pot, atoms, rtol):
    ref = pot.compute(atoms)
    big = pot.compute(atoms.repeat(2))
    assert_close(big.energy, 8 * ref.energy, rtol, "energy")
    assert_close(big.energies, np.tile(ref.energies, 8), rtol, "energies")
    assert_close(big.forces, np.tile(ref.forces, (8, 1)), rtol, "forces")
    assert_close(big.stress, ref.stress, rtol, "stress")


@pytest.mark.parametrize("model", MODELS)
def test_supercell_is_extensive(model):
    # A 4-atom triclinic cell smaller than the cutoff: many periodic images per pair.
    _check_supercell(potential(model), random_crystal(4, seed=5, length=4.0), RTOL["float64"])


@pytest.mark.compile_group("{model}-ean")
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_ean_supercell_is_extensive(model, ean_atoms):
    _check_supercell(potential(model, "float32", EAN_CUTOFF), ean_atoms, RTOL["float32"])


@pytest.mark.compile_group("{model}-molecule")
@pytest.mark.parametrize("model", MODELS)
def test_separated_molecules_add(model):
    a = random_molecule(9, seed=3)
    b = a.copy()
    b.positions = b.positions @ random_rotation(1).T + [CUTOFF + 9.0, 0.0, 0.0]
    pot = potential(model)
    ra, rb, rab = pot.compute(a), pot.compute(b), pot.compute(a + b)
    assert_close(rab.energy, ra.energy + rb.energy, RTOL["float64"], "energy")
    assert_close(rab.forces, np.vstack([ra.forces, rb.forces]), RTOL["float64"], "forces")


# ---------------------------------------------------------------------------------------------
# 3. Forces and stress are derivatives of the energy


def _strained(atoms, i, j, eps):
    """``atoms`` under the symmetric strain ε_ij = ε_ji = eps (positions follow the cell)."""
    strain = np.eye(3)
    strain[i, j] += eps
    if i != j:
        strain[j, i] += eps
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    return out


def _energy(pot, atoms):
    return pot.compute(atoms).energy  # same compiled function as the reference (with forces)


def numerical_forces(pot, atoms, h=1e-5):
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, k] += h
            minus.positions[a, k] -= h
            forces[a, k] = -(_energy(pot, plus) - _energy(pot, minus)) / (2 * h)
    return forces


def numerical_stress(pot, atoms, h=1e-5):
    """σ_ij = (1/V) ∂E/∂ε_ij by central differences of symmetric strains."""
    stress = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            de = _energy(pot, _strained(atoms, i, j, h)) - _energy(pot, _strained(atoms, i, j, -h))
            stress[i, j] = stress[j, i] = de / (2 * h) / (1 if i == j else 2)
    return stress / atoms.get_volume()


@pytest.mark.compile_group("{model}-{system}")
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("system", ["molecule", "crystal"])
def test_forces_are_energy_gradient(model, system):
    atoms = random_molecule(9, seed=3) if system == "molecule" else random_crystal(8, seed=4)
    pot = potential(model)
    res = pot.compute(atoms)
    assert np.max(np.abs(res.forces)) > 1e-3  # not trivially zero
    assert_close(res.forces, numerical_forces(pot, atoms), 1e-6, "forces")


@pytest.mark.compile_group("{model}-crystal")
@pytest.mark.parametrize("model", MODELS)
def test_stress_is_strain_derivative(model):
    atoms = random_crystal(8, seed=4)
    pot = potential(model)
    stress = pot.compute(atoms).stress
    assert np.max(np.abs(stress)) > 1e-4
    assert_close(stress, stress.T, 1e-12, "symmetry")
    assert_close(stress, numerical_stress(pot, atoms), 1e-6, "stress")


@pytest.mark.compile_group("{model}-crystal")
@pytest.mark.parametrize("model", MODELS)
def test_ase_calculator(model):
    atoms = random_crystal(8, seed=4)
    pot = potential(model)
    res = pot.compute(atoms)
    atoms.calc = pot.calculator()
    assert atoms.get_potential_energy() == pytest.approx(res.energy, rel=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(res.energy)
    np.testing.assert_allclose(atoms.get_potential_energies(), res.energies, atol=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), res.forces, atol=1e-12)
    voigt = atoms.get_stress()
    assert voigt.shape == (6,)
    np.testing.assert_allclose(voigt, full_3x3_to_voigt_6_stress(res.stress), atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), res.stress, atol=1e-12)
    assert_close(calculate_numerical_forces(atoms, eps=1e-5), res.forces, 1e-6, "ase forces")
    assert_close(calculate_numerical_stress(atoms, eps=1e-5), voigt, 1e-6, "ase stress")


@pytest.mark.compile_group("{model}-molecule")
@pytest.mark.parametrize("model", MODELS)
def test_ase_calculator_molecule_has_no_stress(model):
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = random_molecule(9, seed=3)
    atoms.calc = potential(model).calculator()
    np.testing.assert_allclose(atoms.get_forces(), potential(model).forces(atoms), atol=1e-12)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


# ---------------------------------------------------------------------------------------------
# 4. and 10. Smoothness at the cutoff, for every envelope and hyperparameter variant

SCAN_STEP = 1e-3  # Å
SCAN_HALF_WIDTH = 0.04  # Å
NEAR_OFFSETS = (1e-4, 1e-5, 3e-6, 1e-6, 1e-7)  # Å inside the cutoff


def _cluster_and_probe(d):
    """A 3-atom cluster at x ≤ 0 and a probe atom at (d, 0, 0): the C–probe pair is the
    shortest probe pair, so its distance d crosses the cutoff first."""
    pos = [[0.0, 0.0, 0.0], [-1.0, 0.3, 0.0], [-0.6, -0.9, 0.4], [d, 0.0, 0.0]]
    return Atoms("CHON", positions=pos)


def cutoff_scan(pot):
    """Energies (K,), forces (K, 4, 3) along the scan, and the far-separated reference result."""
    rc = pot.cutoff
    ds = rc + np.arange(-SCAN_HALF_WIDTH, SCAN_HALF_WIDTH + SCAN_STEP / 2, SCAN_STEP)
    results = [pot.compute(_cluster_and_probe(d)) for d in ds]
    far = pot.compute(_cluster_and_probe(3 * rc))
    energies = np.array([r.energy for r in results])
    forces = np.array([r.forces for r in results])
    return ds, energies, forces, far


def results_just_inside(pot):
    """Energies (K,) and forces (K, 4, 3) with the probe 1e-4 … 1e-7 Å inside the cutoff."""
    results = [pot.compute(_cluster_and_probe(pot.cutoff - d)) for d in NEAR_OFFSETS]
    return np.array([r.energy for r in results]), np.array([r.forces for r in results])


def smoothness_errors(pot) -> dict[str, float]:
    """Measures of non-smoothness along a scan of one pair distance through the cutoff.

    beyond: deviation of energy/forces beyond r_c from the far-separated (isolated) value;
    near: |E − E_isolated| one step inside r_c; energy_jump: largest mismatch between an energy
    step and the trapezoid integral of the force along the path; force_jump: largest force step
    divided by the largest force step well inside the cutoff (~1 for a continuous force, ≫ 1
    for a jump); finite: whether energies and forces are finite also within 1e-4 … 1e-7 Å of
    r_c, where the envelope rounds to 0.
    """
    ds, energies, forces, far = cutoff_scan(pot)
    beyond = ds > pot.cutoff + 1e-9
    fx = forces[:, 3, 0]
    steps = np.max(np.abs(np.diff(forces, axis=0)), axis=(1, 2))
    near = np.argmin(np.abs(ds - (pot.cutoff - SCAN_STEP)))
    e_in, f_in = results_just_inside(pot)
    return {
        "finite": bool(np.all(np.isfinite(e_in)) and np.all(np.isfinite(f_in))),
        "interaction": abs(energies[0] - far.energy),
        "beyond": max(
            np.max(np.abs(energies[beyond] - far.energy)),
            np.max(np.abs(forces[beyond] - far.forces)),
        ),
        "near": abs(energies[near] - far.energy),
        "energy_jump": np.max(np.abs(np.diff(energies) + 0.5 * SCAN_STEP * (fx[1:] + fx[:-1]))),
        "force_jump": np.max(steps) / (np.max(steps[:10]) + 1e-12),
    }


def check_smooth_cutoff(pot):
    err = smoothness_errors(pot)
    assert err["finite"], f"NaN/inf energy or forces just inside the cutoff: {err}"
    assert err["interaction"] > 1e-9, "the probe atom does not interact inside the cutoff"
    assert err["beyond"] < 1e-10, err  # beyond r_c: exactly the isolated cluster + atom
    # Relative to the probe's interaction energy 0.04 Å inside r_c; a C¹ envelope gives
    # ~(1/40)² at one step inside, a hard cutoff ~1.
    assert err["near"] < 1e-2 * err["interaction"], err
    assert err["energy_jump"] < max(1e-3 * err["interaction"], 1e-10), err
    assert err["force_jump"] < 10.0, err


# Defaults: JAT edge_feature "bessel", message "filtered", update "skip", envelope "polynomial";
# SchNet norm None. The thesis' JAT is edge_feature "distance" with message "node".
VARIANTS = [
    ("jat", {}),
    ("jat", {"envelope": "cosine"}),
    ("jat", {"edge_feature": "inverse"}),
    ("jat", {"edge_feature": "distance", "message": "node"}),
    ("jat", {"edge_feature": "gaussian"}),
    ("jat", {"update": "gru"}),
    ("jat", {"update": "gru", "envelope": "cosine", "edge_feature": "distance"}),
    ("schnet", {}),
    ("schnet", {"norm": "layernorm"}),
    ("schnet", {"norm": "rmsnorm"}),
]
BASIC_VARIANTS = [VARIANTS[0], VARIANTS[1], VARIANTS[7]]


def _variant_id(case):
    model, kwargs = case
    return "-".join([model] + [f"{k}={v}" for k, v in kwargs.items()])


@pytest.mark.parametrize("case", VARIANTS, ids=_variant_id)
def test_smooth_at_cutoff(case):
    model, kwargs = case
    check_smooth_cutoff(potential(model, **kwargs))


@pytest.mark.parametrize("case", BASIC_VARIANTS, ids=_variant_id)
def test_float32_finite_just_inside_cutoff(case):
    """In float32 the envelope rounds to ≤ 0 within ~0.2 % of r_c; forces must stay finite."""
    model, kwargs = case
    pot = potential(model, "float32", **kwargs)
    offsets = pot.cutoff * np.array([1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6])
    for d in offsets:
        res = pot.compute(_cluster_and_probe(pot.cutoff - d))
        assert np.isfinite(res.energy) and np.all(np.isfinite(res.forces)), (d, res.forces)


class HardCutoffPair(nn.Module):
    """y_i = Σ_j 1/(1 + r_ij): no envelope, so the energy jumps at the cutoff."""

    @nn.compact
    def __call__(self, species, edge_vectors, senders, receivers, edge_mask):
        w = self.param("w", nn.initializers.ones, ())
        r = edge_lengths(edge_vectors, edge_mask)
        y = segment_sum(jnp.where(edge_mask, w / (1.0 + r), 0.0), receivers, species.shape[0])
        return jnp.where(species >= 0, y, 0.0)


def test_smoothness_check_detects_hard_cutoff():
    pot = jat.Potential.create(HardCutoffPair(), SPECIES, CUTOFF, dtype="float64")
    err = smoothness_errors(pot)
    assert err["energy_jump"] > 1e-2 and err["force_jump"] > 100 and err["near"] > 1e-2


# ---------------------------------------------------------------------------------------------
# 5. Padding, applied to the modules directly


def _graph(atoms, cutoff):
    """(species, vectors, senders, receivers, mask) from ASE's neighbour list, receivers sorted."""
    i, j, vec = neighbor_list("ijD", atoms, cutoff)
    order = np.argsort(i, kind="stable")
    species = np.array([SPECIES.index(s) for s in atoms.get_chemical_symbols()], np.int32)
    return species, vec[order], j[order].astype(np.int32), i[order].astype(np.int32)


def _padded(species, vec, senders, receivers, extra_atoms, extra_edges, fill, target):
    """Append padded atoms (species −1) and masked edges with garbage vectors ``fill``.

    ``target`` = "outside": padded edges point at index N_total (outside the atoms);
    "padded_atom": they connect the last padded atom to itself.
    """
    n_total = len(species) + extra_atoms
    idx = n_total if target == "outside" else n_total - 1
    return (
        np.concatenate([species, np.full(extra_atoms, -1, np.int32)]),
        np.concatenate([vec, np.full((extra_edges, 3), fill)]),
        np.concatenate([senders, np.full(extra_edges, idx, np.int32)]),
        np.concatenate([receivers, np.full(extra_edges, idx, np.int32)]),
        np.arange(len(vec) + extra_edges) < len(vec),
    )


def _module_and_params(model):
    module = MODEL_CLASSES[model](num_species=len(SPECIES), cutoff=CUTOFF, **dict(SMALL[model]))
    species, vec, senders, receivers = _graph(random_crystal(8, seed=4), CUTOFF)
    params = module.init(
        jax.random.PRNGKey(0),
        species,
        vec.astype(np.float32),
        senders,
        receivers,
        np.ones(len(vec), bool),
    )
    return module, params, (species, vec.astype(np.float32), senders, receivers)


def _outputs_and_grads(module, params, species, vec, senders, receivers, mask):
    """Per-atom outputs and d(Σ outputs)/d(edge vectors)."""

    @jax.jit
    def run(params, species, vec, senders, receivers, mask):
        def total(v):
            y = module.apply(params, species, v, senders, receivers, mask)
            return y.sum(), y

        (_, y), grad = jax.value_and_grad(total, has_aux=True)(vec)
        return y, grad

    y, grad = run(params, species, vec, senders, receivers, mask)
    return np.asarray(y), np.asarray(grad)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fill", [0.0, 1e6])
@pytest.mark.parametrize("target", ["outside", "padded_atom"])
def test_padding_changes_nothing(model, fill, target):
    module, params, graph = _module_and_params(model)
    n, e = len(graph[0]), len(graph[1])
    y, grad = _outputs_and_grads(module, params, *graph, np.ones(e, bool))
    y_pad, grad_pad = _outputs_and_grads(
        module, params, *_padded(*graph, extra_atoms=5, extra_edges=11, fill=fill, target=target)
    )
    assert np.all(np.isfinite(y_pad)) and np.all(np.isfinite(grad_pad))
    np.testing.assert_allclose(y_pad[:n], y, rtol=1e-5, atol=1e-6)
    assert np.all(y_pad[n:] == 0.0)
    np.testing.assert_allclose(grad_pad[:e], grad, rtol=1e-5, atol=1e-6)
    assert np.all(grad_pad[e:] == 0.0)


@pytest.mark.parametrize("model", MODELS)
def test_only_padding_gives_zero(model):
    """A graph of padded atoms and masked zero-length edges: outputs 0, gradients finite."""
    module, params, _ = _module_and_params(model)
    species = np.full(4, -1, np.int32)
    zeros = np.zeros(6, np.int32)
    y, grad = _outputs_and_grads(
        module, params, species, np.zeros((6, 3), np.float32), zeros, zeros, np.zeros(6, bool)
    )
    assert np.all(y == 0.0) and np.all(grad == 0.0)
