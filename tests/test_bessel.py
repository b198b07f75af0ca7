"""NeuralIL-style spherical Bessel descriptors and ``jat.models.BesselNN``.

The radial basis and the descriptors are checked against independent constructions with SciPy
(roots by ``brentq`` on ``spherical_jn``, orthonormalisation by a Cholesky factorisation of the
Gram matrix, the O(neighbours²) double sum with ``eval_legendre``) and against the reference
values printed by NeuralIL's ``bessel_descriptors.py`` (from Kocer's ``sb_desc``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SPECIES, random_crystal, random_molecule, random_rotation
from numpy.polynomial import chebyshev
from test_models import assert_close, check_smooth_cutoff, numerical_forces

import jat
from jat.graph import neighbor_list
from jat.models import MODELS
from jat.models.bessel import (
    BesselNN,
    bessel_descriptors,
    num_descriptors,
    radial_basis,
    radial_closed_form,
    radial_tables,
    real_spherical_harmonics,
    spherical_bessel_roots,
    spherical_jn,
)

special = pytest.importorskip("scipy.special")
optimize = pytest.importorskip("scipy.optimize")

CUTOFF = 3.5
N_MAX = 4


# ---------------------------------------------------------------------------------------------
# Independent reference (SciPy, float64)


def scipy_roots(ell: int, count: int) -> np.ndarray:
    """The first ``count`` positive roots of j_l: sign changes on a fine grid, then brentq."""
    x = np.linspace(1e-3, np.pi * (count + ell + 2), 200_000)
    v = special.spherical_jn(ell, x)
    idx = np.nonzero(np.sign(v[:-1]) != np.sign(v[1:]))[0][:count]
    return np.array(
        [
            optimize.brentq(lambda t: special.spherical_jn(ell, t), x[i], x[i + 1], xtol=1e-15)
            for i in idx
        ]
    )


@functools.cache
def _gauss(n_points: int = 120):
    x, w = np.polynomial.legendre.leggauss(n_points)
    r = 0.5 * CUTOFF * (x + 1.0)
    return r, 0.5 * CUTOFF * w


def _f_functions(ell: int, n_max: int, r: np.ndarray, cutoff: float = CUTOFF) -> np.ndarray:
    """Kocer et al.'s f_nl(r), n = 0 … n_max − l, from SciPy: (n_f, len(r))."""
    u = scipy_roots(ell, n_max - ell + 2)
    jn = special.spherical_jn
    norm = np.sqrt(2.0 / (cutoff**3 * (u[:-1] ** 2 + u[1:] ** 2)))
    a = u[1:] / jn(ell + 1, u[:-1])
    b = u[:-1] / jn(ell + 1, u[1:])
    return norm[:, None] * (
        a[:, None] * jn(ell, np.outer(u[:-1], r) / cutoff)
        - b[:, None] * jn(ell, np.outer(u[1:], r) / cutoff)
    )


@functools.cache
def _gram_schmidt(ell: int, n_max: int) -> np.ndarray:
    """L⁻¹ with G = L Lᵀ the Gram matrix ∫ f_n f_m r² dr: g = L⁻¹ f is the unique orthonormal
    set with g_n ∈ span(f_0 … f_n) and a positive coefficient of f_n (Kocer's recursion)."""
    r, w = _gauss()
    f = _f_functions(ell, n_max, r)
    gram = (f * (w * r * r)) @ f.T
    return np.linalg.inv(np.linalg.cholesky(gram))


def reference_g(r: np.ndarray, n_max: int = N_MAX) -> np.ndarray:
    """g_nl(r) (len(r), n_g) ordered (l=0, n=0…n_max), (l=1, …), …; 0 beyond r_c."""
    r = np.atleast_1d(np.asarray(r, float))
    cols = [_gram_schmidt(ell, n_max) @ _f_functions(ell, n_max, r) for ell in range(n_max + 1)]
    return np.where(r[:, None] <= CUTOFF, np.concatenate(cols).T, 0.0)


def reference_descriptors(center, neighbors, neighbor_species, num_species, n_max=N_MAX):
    """The O(neighbours²) double sum of NeuralIL's definition for one centre, (P · n_g,)."""
    vec = np.asarray(neighbors, float) - np.asarray(center, float)
    r = np.linalg.norm(vec, axis=1)
    g = reference_g(r, n_max)  # (K, n_g)
    ells = radial_tables(n_max)["g_l"]
    p = np.zeros((num_species, num_species, len(ells)))
    for j in range(len(r)):
        for k in range(len(r)):
            cos = np.clip(vec[j] @ vec[k] / (r[j] * r[k]), -1.0, 1.0)
            ang = (2 * ells + 1) / (4 * np.pi) * special.eval_legendre(ells, cos)
            p[neighbor_species[j], neighbor_species[k]] += g[j] * g[k] * ang
    ia, ib = np.triu_indices(num_species)
    return p[ia, ib].reshape(-1)


@functools.partial(jax.jit, static_argnums=(5, 6, 7))
def descriptors(species, vectors, senders, receivers, mask, num_species, cutoff, n_max):
    """``bessel_descriptors``, compiled (eager dispatch of its many small ops is slow)."""
    return bessel_descriptors(
        species, vectors, senders, receivers, mask, num_species, cutoff, n_max
    )


def star_descriptors(center, neighbors, neighbor_species, num_species, n_max=N_MAX):
    """``bessel_descriptors`` of a star graph (edges neighbour → centre 0): (1 + K, n_features)."""
    neighbors = np.asarray(neighbors, float)
    k = len(neighbors)
    species = np.concatenate([[0], neighbor_species]).astype(np.int32)
    vec = neighbors - np.asarray(center, float)
    out = descriptors(
        jnp.asarray(species),
        jnp.asarray(vec),
        jnp.arange(1, k + 1),
        jnp.zeros(k, jnp.int32),
        jnp.ones(k, bool),
        num_species,
        CUTOFF,
        n_max,
    )
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------
# Radial functions


def test_roots_match_scipy(x64):
    table = spherical_bessel_roots(8, 10)
    for ell in range(9):
        np.testing.assert_allclose(table[ell, : 10 - ell], scipy_roots(ell, 10 - ell), rtol=1e-14)
        assert np.all(np.isnan(table[ell, 10 - ell :]))


def test_host_spherical_jn_matches_scipy():
    x = np.linspace(0.0, 40.0, 8001)
    for ell in range(10):
        assert_close(spherical_jn(ell, x), special.spherical_jn(ell, x), 1e-15, f"j_{ell}")


@pytest.mark.parametrize("n_max", [4, 6])
def test_radial_functions_are_orthonormal(n_max, x64):
    r, w = _gauss()
    g = np.asarray(radial_basis(jnp.asarray(r), CUTOFF, n_max))
    ells = radial_tables(n_max)["g_l"]
    assert g.shape == (len(r), (n_max + 1) * (n_max + 2) // 2)
    for ell in range(n_max + 1):
        block = g[:, ells == ell]
        gram = (block.T * (w * r * r)) @ block
        np.testing.assert_allclose(gram, np.eye(n_max - ell + 1), atol=1e-12)


def test_radial_functions_match_gram_schmidt(x64):
    """The Chebyshev tables reproduce the closed form + Kocer's recursion, i.e. Gram–Schmidt on
    the f_nl built from SciPy, to ~1e-14 in float64; float32 keeps ~1e-6."""
    r = np.linspace(0.0, CUTOFF, 3001)
    ref = reference_g(r)
    assert_close(radial_basis(jnp.asarray(r), CUTOFF, N_MAX), ref, 1e-13, "g_nl float64")
    g32 = radial_basis(jnp.asarray(r, jnp.float32), CUTOFF, N_MAX)
    assert g32.dtype == jnp.float32
    assert_close(g32, ref, 2e-6, "g_nl float32")
    s = np.linspace(0.0, 1.0, 1001)
    closed = radial_closed_form(s, N_MAX) * CUTOFF**-1.5
    assert_close(closed, reference_g(s * CUTOFF), 1e-13, "closed form")


def test_radial_functions_vanish_smoothly_at_cutoff(x64):
    """g and g' vanish at r_c, and by Bessel's equation (j_l'' = −2 j_l'/x at a root of j_l)
    so does g'': near r_c each g_nl goes as (r_c − r)³."""
    slope = jax.jit(jax.vmap(jax.jacfwd(lambda r: radial_basis(r[None], CUTOFF, N_MAX)[0])))
    r = jnp.asarray([CUTOFF, CUTOFF - 1e-3])
    values, slopes = radial_basis(r, CUTOFF, N_MAX), slope(r)
    assert np.max(np.abs(values[0])) < 1e-13 and np.max(np.abs(slopes[0])) < 1e-12
    # The closed form (SciPy), independently of the tables: cubic approach to r_c.
    ratio = reference_g(CUTOFF - 1e-3) / reference_g(CUTOFF - 2e-3)
    np.testing.assert_allclose(ratio, 1 / 8, rtol=2e-3)
    assert_close(values[1], reference_g(CUTOFF - 1e-3)[0], 1e-13, "g just inside r_c")
    # The Chebyshev tables: second derivative 0 at t = 1, third derivative not.
    cheb = radial_tables(N_MAX)["cheb"]
    d2 = chebyshev.chebval(1.0, chebyshev.chebder(cheb, 2))
    d3 = chebyshev.chebval(1.0, chebyshev.chebder(cheb, 3))
    assert np.max(np.abs(d2)) < 1e-11 * np.max(np.abs(d3)) and np.min(np.abs(d3)) > 1.0


def test_addition_theorem(x64):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 50, 3))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    ya = np.asarray(real_spherical_harmonics(jnp.asarray(a), 6))
    yb = np.asarray(real_spherical_harmonics(jnp.asarray(b), 6))
    cos = np.sum(a * b, axis=1)
    for ell in range(7):
        sl = slice(ell * ell, (ell + 1) ** 2)
        lhs = np.sum(ya[:, sl] * yb[:, sl], axis=1)
        rhs = (2 * ell + 1) / (4 * np.pi) * special.eval_legendre(ell, cos)
        np.testing.assert_allclose(lhs, rhs, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Descriptors


def test_feature_count(x64):
    assert num_descriptors(4, 4) == 150
    d = star_descriptors([0, 0, 0], [[1.0, 0.2, 0.1]], [2], 4)
    assert d.shape == (2, 150)
    d = star_descriptors([0, 0, 0], [[1.0, 0.2, 0.1]], [1], 3, n_max=2)
    assert d.shape == (2, 6 * 6)


def test_single_neighbour(x64):
    r = 1.7
    d = star_descriptors([0, 0, 0], [[r * 0.6, -r * 0.8, 0.0]], [2], 4)
    ells = radial_tables(N_MAX)["g_l"]
    expected = np.zeros((10, 15))
    expected[7] = reference_g(r)[0] ** 2 * (2 * ells + 1) / (4 * np.pi)  # pair (2, 2)
    assert_close(d[0], expected.reshape(-1), 1e-12, "single neighbour")
    assert np.all(d[1] == 0.0)  # the neighbour has no edge of its own here


@pytest.mark.parametrize(("species", "angle"), [((1, 1), 0.7), ((0, 3), 1.9), ((3, 0), np.pi)])
def test_two_neighbours_at_known_angle(species, angle, x64):
    r1, r2 = 1.1, 2.9
    center = np.array([0.3, -0.2, 0.5])
    nbrs = center + np.array([[r1, 0.0, 0.0], [r2 * np.cos(angle), r2 * np.sin(angle), 0.0]])
    d = star_descriptors(center, nbrs, list(species), 4)[0]
    assert_close(d, reference_descriptors(center, nbrs, list(species), 4), 1e-12, "descriptors")
    # By hand: the cross term g(r1) g(r2) (2l+1)/(4π) P_l(cos θ) appears once in (a, b), a < b.
    ells = radial_tables(N_MAX)["g_l"]
    ang = (2 * ells + 1) / (4 * np.pi)
    g1, g2 = reference_g([r1, r2])
    p = d.reshape(10, 15)
    pair = {(a, b): k for k, (a, b) in enumerate(zip(*np.triu_indices(4), strict=True))}
    cross = g1 * g2 * ang * special.eval_legendre(ells, np.cos(angle))
    a, b = sorted(species)
    if a == b:
        assert_close(p[pair[a, a]], (g1**2 + g2**2) * ang + 2 * cross, 1e-12, "same species")
    else:
        assert_close(p[pair[a, b]], cross, 1e-12, "cross pair")
        assert_close(p[pair[species[0], species[0]]], g1**2 * ang, 1e-12, "first")
        assert_close(p[pair[species[1], species[1]]], g2**2 * ang, 1e-12, "second")


def test_random_environment_matches_double_sum(x64):
    rng = np.random.default_rng(7)
    nbrs = rng.uniform(-2.0, 2.0, (9, 3))
    nbrs = nbrs[np.linalg.norm(nbrs, axis=1) > 0.5]
    sp = rng.integers(0, 4, len(nbrs))
    inside = np.linalg.norm(nbrs, axis=1) < CUTOFF
    d = star_descriptors(np.zeros(3), nbrs, sp, 4)[0]
    ref = reference_descriptors(np.zeros(3), nbrs[inside], sp[inside], 4)
    assert_close(d, ref, 1e-12, "descriptors")


def test_neuralil_reference_values(x64):
    """NeuralIL's ``bessel_descriptors.py`` self-test: n_max 4, r_c 3.7711 Å, one species; its
    reference (from sb_desc) lists the 15 values in another order, so compare them sorted."""
    # fmt: off
    reference = [0.031871, 0.138079, 0.000416, 0.099814, 0.000514, 0.002641, 0.000580, 0.002311,
                 0.001099, 0.654837, 0.106035, 0.003456, 0.005239, 0.367765, 0.483945]
    neighbors = [[1.3681827, -1.3103517, -1.3131874], [-1.5151760, 1.3360077, -1.3477119],
                 [-1.3989598, -1.2973683, 1.3679189], [1.2279369, 1.3400378, 1.4797429]]
    # fmt: on
    d = descriptors(
        jnp.zeros(5, jnp.int32),
        jnp.asarray(neighbors),
        jnp.arange(1, 5),
        jnp.zeros(4, jnp.int32),
        jnp.ones(4, bool),
        4,
        3.7711,
        4,
    )
    np.testing.assert_allclose(np.sort(np.asarray(d)[0, :15]), np.sort(reference), atol=2e-6)


def _descriptors_of(atoms, cutoff=CUTOFF):
    cell = atoms.cell[:] if atoms.pbc.any() else None
    pbc = None if cell is None else atoms.pbc
    nbrs = neighbor_list(atoms.positions, cutoff, cell=cell, pbc=pbc)
    s, r = np.asarray(nbrs.senders), np.asarray(nbrs.receivers)
    mask = np.asarray(nbrs.mask)
    n = len(atoms)
    pos = np.vstack([atoms.positions, np.zeros((1, 3))])
    shifts = np.asarray(nbrs.shifts, float) @ (cell if cell is not None else np.zeros((3, 3)))
    vec = pos[np.minimum(s, n)] - pos[np.minimum(r, n)] + shifts
    species = np.array([SPECIES.index(x) for x in atoms.get_chemical_symbols()], np.int32)
    args = (species, vec, s, r, mask)
    return np.asarray(descriptors(*map(jnp.asarray, args), 4, CUTOFF, N_MAX))


@pytest.mark.parametrize("system", ["molecule", "crystal"])
def test_descriptor_invariances(system, x64):
    atoms = random_molecule(12, seed=11) if system == "molecule" else random_crystal(8, seed=4)
    ref = _descriptors_of(atoms)
    assert np.all(np.isfinite(ref)) and np.max(np.abs(ref)) > 1e-2
    rng = np.random.default_rng(3)
    # translation
    moved = atoms.copy()
    moved.translate(rng.uniform(-5.0, 5.0, 3))
    assert_close(_descriptors_of(moved), ref, 1e-11, "translation")
    # rotation (cell rotated with the atoms)
    rot = random_rotation(5)
    turned = atoms.copy()
    turned.set_cell(atoms.cell[:] @ rot.T, scale_atoms=False)
    turned.positions = atoms.positions @ rot.T
    assert_close(_descriptors_of(turned), ref, 1e-11, "rotation")
    # permutation of atoms: rows follow the atoms; swapping two atoms of one species changes
    # nothing else
    perm = rng.permutation(len(atoms))
    assert_close(_descriptors_of(atoms[perm]), ref[perm], 1e-11, "permutation")
    symbols = np.array(atoms.get_chemical_symbols())
    same = next(s for s in SPECIES if np.sum(symbols == s) >= 2)
    i, j = np.nonzero(symbols == same)[0][:2]
    swap = np.arange(len(atoms))
    swap[[i, j]] = swap[[j, i]]
    assert_close(_descriptors_of(atoms[swap]), ref[swap], 1e-11, "swap within a species")


def test_descriptors_padding_and_masked_garbage(x64):
    atoms = random_molecule(9, seed=3)
    ref = _descriptors_of(atoms)
    nbrs = neighbor_list(atoms.positions, CUTOFF)
    s, r, mask = (np.asarray(x) for x in (nbrs.senders, nbrs.receivers, nbrs.mask))
    e, n = int(mask.sum()), len(atoms)
    species = np.array([SPECIES.index(x) for x in atoms.get_chemical_symbols()], np.int32)
    vec = atoms.positions[s[:e]] - atoms.positions[r[:e]]
    # 3 padded atoms; 7 masked edges of garbage (0 or 1e6) into the last padded atom or out of
    # range; 2 unmasked, short edges between padded atoms (a padded sender counts for nothing).
    sp = np.concatenate([species, [-1, -1, -1]]).astype(np.int32)
    snd = np.concatenate([s[:e], [n + 3] * 4, [n + 2] * 3, [n, n + 1]])
    rcv = np.concatenate([r[:e], [n + 3] * 4, [n + 2] * 3, [n + 1, n]])
    m = np.concatenate([np.ones(e, bool), np.zeros(7, bool), np.ones(2, bool)])

    @jax.jit
    def value_and_grad(vv):
        def total(vv):
            d = bessel_descriptors(sp, vv, snd, rcv, m, 4, CUTOFF, N_MAX)
            return d.sum(), d

        return jax.value_and_grad(total, has_aux=True)(vv)

    for fill in (0.0, 1e6):
        v = np.vstack([vec, np.full((7, 3), fill), [[0.9, 0.3, 0.0], [-0.9, -0.3, 0.0]]])
        (_, d), grad = value_and_grad(jnp.asarray(v))
        assert np.all(np.isfinite(np.asarray(grad)))
        assert_close(np.asarray(d)[:n], ref, 1e-12, f"padding fill={fill}")
        assert np.all(np.asarray(d)[n:] == 0.0) and np.all(np.asarray(grad)[e:] == 0.0)


def test_zero_length_and_beyond_cutoff_edges_are_ignored(x64):
    base = star_descriptors([0, 0, 0], [[1.2, 0.3, -0.4]], [1], 4)
    others = [[1.2, 0.3, -0.4], [0, 0, 0], [CUTOFF, 0, 0], [0, 3.6, 0]]
    extra = star_descriptors([0, 0, 0], others, [1, 2, 3, 0], 4)
    assert_close(extra[0], base[0], 1e-14, "ignored edges")


# ---------------------------------------------------------------------------------------------
# The model through jat.Potential


@functools.cache
def bessel_potential(dtype="float64", **kwargs):
    return jat.Potential.create("bessel", SPECIES, CUTOFF, seed=2, dtype=dtype, **kwargs)


def test_registered():
    assert MODELS["bessel"] is BesselNN
    module = BesselNN(num_species=4, cutoff=CUTOFF)
    defaults = (module.n_max, module.embed_dim, tuple(module.widths), module.core)
    assert defaults == (4, 2, (64, 32, 16), "plain")
    pot = bessel_potential()
    kernel = pot.params["params"]["inlet"]["kernel"]
    assert kernel.shape == (150 + 2, 64)


@pytest.mark.parametrize(("core", "system"), [("plain", "molecule"), ("residual", "crystal")])
def test_forces_match_finite_differences(core, system):
    pot = bessel_potential(core=core)
    atoms = random_molecule(7, seed=3) if system == "molecule" else random_crystal(5, seed=4)
    res = pot.compute(atoms)
    assert np.max(np.abs(res.forces)) > 1e-3
    assert_close(res.forces, numerical_forces(pot, atoms), 1e-6, f"forces {core}")


def test_potential_padded_batch():
    """A batch pads the smaller structure with phantom atoms: nothing changes."""
    pot = bessel_potential()
    big, small = random_molecule(9, seed=3), random_molecule(4, seed=6)
    batch = pot.compute_batch([big, small])
    for got, atoms in zip(batch, (big, small), strict=True):
        want = pot.compute(atoms)
        assert_close(got.energy, want.energy, 1e-10, "padded batch energy")
        assert_close(got.energies, want.energies, 1e-10, "padded batch energies")
        assert_close(got.forces, want.forces, 1e-10, "padded batch forces")


def test_module_padding_changes_nothing(x64):
    atoms = random_crystal(8, seed=4)
    nbrs = neighbor_list(atoms.positions, CUTOFF, cell=atoms.cell[:], pbc=True)
    mask = np.asarray(nbrs.mask)
    e, n = int(mask.sum()), len(atoms)
    s, r = np.asarray(nbrs.senders)[:e], np.asarray(nbrs.receivers)[:e]
    vec = atoms.positions[s] - atoms.positions[r] + np.asarray(nbrs.shifts)[:e] @ atoms.cell[:]
    species = np.array([SPECIES.index(x) for x in atoms.get_chemical_symbols()], np.int32)
    module = BesselNN(num_species=4, cutoff=CUTOFF, widths=(16, 8))
    params = jax.jit(module.init)(jax.random.PRNGKey(0), species, vec, s, r, np.ones(e, bool))

    @jax.jit
    def value_and_grad(sp, v, snd, rcv, m):
        def total(vv):
            y = module.apply(params, sp, vv, snd, rcv, m)
            return y.sum(), y

        return jax.value_and_grad(total, has_aux=True)(v)

    def run(*args):
        (_, y), g = value_and_grad(*map(jnp.asarray, args))
        return np.asarray(y), np.asarray(g)

    y, g = run(species, vec, s, r, np.ones(e, bool))
    for fill in (0.0, 1e6):
        y_pad, g_pad = run(
            np.concatenate([species, [-1] * 4]).astype(np.int32),
            np.vstack([vec, np.full((6, 3), fill)]),
            np.concatenate([s, [n + 4] * 6]),
            np.concatenate([r, [n + 4] * 6]),
            np.arange(e + 6) < e,
        )
        assert np.all(np.isfinite(y_pad)) and np.all(np.isfinite(g_pad))
        assert_close(y_pad[:n], y, 1e-12, "outputs")
        assert np.all(y_pad[n:] == 0.0) and np.all(g_pad[e:] == 0.0)
        assert_close(g_pad[:e], g, 1e-12, "gradients")


@pytest.mark.parametrize("core", ["plain", "residual"])
def test_smooth_at_cutoff(core):
    check_smooth_cutoff(bessel_potential(core=core))


def test_bad_core_is_rejected():
    with pytest.raises(ValueError, match="core"):
        jat.Potential.create("bessel", SPECIES, CUTOFF, core="dense")


def test_ean_box(ean_atoms):
    """The NeuralIL EAN setting (r_c 3.5 Å, n_max 4, embedding 2, widths 64:32:16), float32:
    finite, translation invariant, and the forces sum to zero."""
    pot = bessel_potential("float32")
    res = pot.compute(ean_atoms)
    assert np.isfinite(res.energy) and np.all(np.isfinite(res.forces))
    assert np.abs(res.forces.sum(axis=0)).max() < 1e-3 * max(1.0, np.abs(res.forces).max())
    moved = ean_atoms.copy()
    moved.translate([1.3, -0.4, 2.2])
    assert_close(pot.compute(moved).forces, res.forces, 2e-4, "forces")


def test_save_and_load(tmp_path):
    pot = bessel_potential(core="residual")
    atoms = random_molecule(7, seed=3)
    loaded = jat.Potential.load(pot.save(tmp_path / "bessel"))
    assert loaded.model == "bessel" and loaded.module == pot.module
    assert loaded.compute(atoms).energy == pytest.approx(pot.compute(atoms).energy, rel=1e-12)
