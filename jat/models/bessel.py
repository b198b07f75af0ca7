"""NeuralIL (Montes-Campos et al., J. Phys. Chem. A 126, 4252 (2022)): spherical Bessel descriptors
and a per-atom MLP.

Descriptors. For a centre i and an unordered pair of neighbour species a ≤ b,

    p_i[a,b,(n,l)] = Σ_{j∈a} Σ_{k∈b} g_nl(r_ij) g_nl(r_ik) (2l+1)/(4π) P_l(cos θ_jik),

j = k included, l = 0 … n_max, n = 0 … n_max − l: S(S+1)/2 × (n_max+1)(n_max+2)/2 features
(150 for 4 species and n_max = 4), ordered as NeuralIL's ``PowerSpectrumGenerator``: species pairs
in row-major upper-triangle order (0,0), (0,1), …, (S−1,S−1), and within each pair l-major,
(l=0, n=0…n_max), (l=1, n=0…n_max−1), …. The a ≠ b channels hold the plain sum over j ∈ a, k ∈ b
(not doubled): NeuralIL computes the full symmetric S × S array and keeps its upper triangle,
which is what is done here. Neighbours are the graph's edges (all j with 0 < r_ij < r_c, periodic
images included); the centre itself is not its own neighbour.

The angular factor is NeuralIL's (2l+1)/(4π) P_l, unchanged, so by the addition theorem, with
orthonormal real spherical harmonics Y_lm,

    p_i[a,b,n,l] = Σ_m c_i[a,n,l,m] c_i[b,n,l,m],    c_i[a,n,l,m] = Σ_{j∈a} g_nl(r_ij) Y_lm(r̂_ij),

computed in O(edges): one segment sum of the (E, Σ_l (n_max−l+1)(2l+1)) edge features
g_nl Y_lm (55 for n_max = 4) into N·S (centre, neighbour species) rows, then a per-atom
contraction. NeuralIL's own code takes the O(neighbours²) double sum over a sorted, padded
neighbour array per centre.

Radial functions (Kocer, Mason & Erturk, J. Chem. Phys. 150, 154102 (2019), with NeuralIL's
normalisation, ``neuralil/bessel_descriptors.py`` and ``spherical_bessel/coefficients.py``): with
u_{l,n} the (n+1)-th positive root of j_l,

    f_nl(r) = [u_{l,n+1}/j_{l+1}(u_{l,n}) j_l(u_{l,n} r/r_c) − u_{l,n}/j_{l+1}(u_{l,n+1})
               j_l(u_{l,n+1} r/r_c)] · sqrt(2 / (r_c³ (u_{l,n}² + u_{l,n+1}²))),

which vanishes with its first derivative at r_c (j_l'(u) = −j_{l+1}(u) at a root of j_l; by
Bessel's equation, j_l'' = −2 j_l'/u there, so the second derivative vanishes too), and

    e_n = u_{l,n−1}² u_{l,n+1}² / ((u_{l,n−1}² + u_{l,n}²)(u_{l,n}² + u_{l,n+1}²)),
    d_0 = 1,  d_n = 1 − e_n / d_{n−1},
    g_0 = f_0,  g_n = (f_n + sqrt(e_n / d_{n−1}) g_{n−1}) / sqrt(d_n),

which makes g_0l … g_{n_max−l, l} orthonormal on [0, r_c] with weight r² (it is the Gram–Schmidt
process on f_0l, f_1l, …). g is 0 for r ≥ r_c, so energies and forces are continuous (C²) when a
neighbour crosses the cutoff.

Evaluation. Roots and coefficients are computed once per n_max on the host in float64 numpy
(bisection on the interlacing roots of j_{l−1}; j_l by upward recurrence above x = l + 1 and by
its power series below). Since g_nl(r) = r_c^(−3/2) h_nl(r/r_c) with h independent of r_c, the
h_nl are tabulated once as Chebyshev expansions on [0, 1] (interpolation at Chebyshev points, the
degree raised until the tail is below 1e-15 of the largest coefficient: 32 for n_max = 4), with
the value and first two derivatives at r_c then made exactly 0 by a minimum-norm correction of
the coefficients. The expansion matches the closed form to ~1e-14 relative (checked against
SciPy in the tests), is accurate in float32 near r = 0 where the closed form of j_l cancels
catastrophically, and evaluates all radial functions with one recurrence and one small matrix
product per edge, about 4× faster (energy + forces) than evaluating j_l directly. The real
spherical harmonics are polynomials in the unit vector, Y_lm = K_lm Q_lm(z) A_m(x, y), likewise
evaluated as (powers of z) @ W_Q times (A_m) @ W_A directly in the layout of the edge features.
The small matrix products run at ``Precision.HIGHEST`` (no TF32 on GPUs).

Model (NeuralIL's ``NeuralIL`` with ``Core`` or ``ResNetCore``): descriptors concatenated with a
learned ``embed_dim``-dimensional embedding of the centre's species, then

- ``core="plain"``: Dense(w_0) → swish, then Dense(w_k) → LayerNorm → swish for the other widths
  (NeuralIL's ``Core``: no LayerNorm on the inlet);
- ``core="residual"``: NeuralIL 2023's ``ResNetCore`` blocks (Chen et al., Entropy 22, 193 (2020))
  over the widths w_0 → w_1 → … → w_last → w_last, see :class:`ResidualBlock`;

and a final Dense(1). NeuralIL ends with Dense(1) → swish → Dense(1) (its "outlet" and
"denormalizer"); jat drops that one-wide swish bottleneck, the per-species shift and scale of
:class:`jat.Potential` playing the denormaliser's role. Padded atoms (species < 0) have no
neighbours, are nobody's neighbour, output exactly 0 and do not touch real atoms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from jat.models import hyper
from jat.models.blocks import PropertyHead, swish

Array = jax.Array

CORES = ("plain", "residual")
MAX_N_MAX = 12  # descriptor order; (n_max + 1)(n_max + 2) / 2 radial-angular channels
_SERIES_TERMS = 30  # power-series terms of j_l (host, float64) below x = l + 1
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Host-side constants (numpy, float64)


def spherical_jn(ell: int, x: np.ndarray) -> np.ndarray:
    """Spherical Bessel function j_l(x), x ≥ 0, float64 numpy (host side).

    Upward recurrence from j_0 = sin x / x and j_1 = sin x / x² − cos x / x for x ≥ l + 1, where
    it is stable; the power series x^l Σ_k (−x²/2)^k / (k! (2l+2k+1)!!) below.
    """
    x = np.asarray(x, dtype=np.float64)
    big = x >= ell + 1.0
    xb = np.where(big, x, ell + 1.0)
    j_prev, j_cur = np.sin(xb) / xb, np.sin(xb) / xb**2 - np.cos(xb) / xb
    if ell == 0:
        j_cur = j_prev
    for k in range(2, ell + 1):
        j_prev, j_cur = j_cur, (2 * k - 1) / xb * j_cur - j_prev
    xs = np.where(big, 0.0, x)
    term = xs**ell / math.prod(range(1, 2 * ell + 2, 2))
    series = term.copy()
    for k in range(1, _SERIES_TERMS):
        term = term * (-0.5 * xs * xs) / (k * (2 * ell + 2 * k + 1))
        series = series + term
    return np.where(big, j_cur, series)


def spherical_bessel_roots(l_max: int, count: int) -> np.ndarray:
    """Positive roots of the spherical Bessel functions j_l, shape (l_max + 1, count).

    ``table[l, k]`` is the (k+1)-th positive root of j_l for k < count − l (NaN beyond): the
    roots of j_l interlace those of j_{l−1}, so each is found by bisection between two
    consecutive roots of j_{l−1} (as in NeuralIL and Kocer's sb_desc).
    """
    if count < l_max + 1:
        raise ValueError("count must be at least l_max + 1")
    table = np.full((l_max + 1, count), np.nan)
    table[0] = np.pi * np.arange(1, count + 1)
    for ell in range(1, l_max + 1):
        lo, hi = table[ell - 1, : count - ell].copy(), table[ell - 1, 1 : count - ell + 1].copy()
        f_lo = spherical_jn(ell, lo)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            f_mid = spherical_jn(ell, mid)
            left = np.sign(f_mid) == np.sign(f_lo)
            lo, f_lo = np.where(left, mid, lo), np.where(left, f_mid, f_lo)
            hi = np.where(left, hi, mid)
            if np.all(hi - lo <= 4 * np.finfo(float).eps * hi):
                break
        table[ell, : count - ell] = 0.5 * (lo + hi)
    return table


def _orthogonalisation(u: np.ndarray) -> np.ndarray:
    """Kocer et al.'s recursion as a lower-triangular matrix T, g = T f, for roots u (n_f + 1,)."""
    n_f = len(u) - 1
    usq = u * u
    t = np.eye(n_f)
    d_prev = 1.0
    for n in range(1, n_f):
        e = usq[n - 1] * usq[n + 1] / ((usq[n - 1] + usq[n]) * (usq[n] + usq[n + 1]))
        d = 1.0 - e / d_prev
        t[n] = (t[n] + math.sqrt(e / d_prev) * t[n - 1]) / math.sqrt(d)
        d_prev = d
    return t


def radial_closed_form(s: np.ndarray, n_max: int) -> np.ndarray:
    """h_nl(s) = r_c^(3/2) g_nl(s r_c) from the closed form, s = r/r_c ∈ [0, 1] → (len(s), n_g)."""
    s = np.atleast_1d(np.asarray(s, dtype=np.float64))
    roots = spherical_bessel_roots(n_max, n_max + 2)
    cols = []
    for ell in range(n_max + 1):
        u = roots[ell, : n_max - ell + 2]
        norm = np.sqrt(2.0 / (u[:-1] ** 2 + u[1:] ** 2))
        jl1 = spherical_jn(ell + 1, u)
        c1, c2 = u[1:] / jl1[:-1] * norm, u[:-1] / jl1[1:] * norm
        j = spherical_jn(ell, np.outer(u, s))  # (n_f + 1, len(s))
        f = c1[:, None] * j[:-1] - c2[:, None] * j[1:]
        cols.append(_orthogonalisation(u) @ f)
    return np.concatenate(cols).T


@functools.cache
def radial_tables(n_max: int) -> dict[str, np.ndarray]:
    """Constants of the radial basis for a given n_max (float64, read-only arrays).

    ``roots`` (n_max+1, n_max+2) roots of j_l; ``g_l``, ``g_n`` (n_g,) the l and n of each radial
    function, ordered (l=0, n=0…n_max), (l=1, n=0…n_max−1), …; ``cheb`` (K+1, n_g) Chebyshev
    coefficients of h_nl(s) = r_c^(3/2) g_nl(s r_c) in t = 2s − 1.
    """
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max}")
    from numpy.polynomial import chebyshev

    roots = spherical_bessel_roots(n_max, n_max + 2)
    g_l = np.concatenate([[ell] * (n_max - ell + 1) for ell in range(n_max + 1)])
    g_n = np.concatenate([np.arange(n_max - ell + 1) for ell in range(n_max + 1)])
    for degree in range(16, 257, 4):
        nodes = np.cos(np.pi * (np.arange(degree + 1) + 0.5) / (degree + 1))
        values = radial_closed_form(0.5 * (nodes + 1.0), n_max)
        cheb = chebyshev.chebvander(nodes, degree)  # interpolation at first-kind points
        cheb = np.linalg.solve(cheb, values)
        if np.max(np.abs(cheb[-4:])) < 1e-15 * np.max(np.abs(cheb)):
            break
    # h, h', h'' at t = 1 (r = r_c): T_k(1) = 1, T_k'(1) = k², T_k''(1) = k²(k²−1)/3; zero them
    # exactly with the minimum-norm change of the coefficients (~1e-15).
    k2 = np.arange(degree + 1.0) ** 2
    ends = np.stack([np.ones_like(k2), k2, k2 * (k2 - 1.0) / 3.0])
    cheb = cheb - ends.T @ np.linalg.solve(ends @ ends.T, ends @ cheb)
    out = {"roots": roots, "g_l": g_l, "g_n": g_n, "cheb": cheb}
    for v in out.values():
        v.setflags(write=False)
    return out


@functools.cache
def _harmonic_tables(l_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Real orthonormal spherical harmonics Y_lm(r̂) = K_lm Q_lm(z) A_m(x, y) as two matrices.

    Q_lm = d^|m| P_l / dz^|m| (a polynomial in z), A_m = Re (x+iy)^m for m ≥ 0 and Im (x+iy)^|m|
    for m < 0, K_lm = sqrt((2l+1)/(4π) (l−|m|)!/(l+|m|)!) (× √2 for m ≠ 0); columns (l, m) =
    (0,0), (1,−1), (1,0), (1,1), (2,−2), …. The Condon–Shortley sign is dropped: it cancels in
    every product Y_lm Y_lm. Returns W_Q (l_max+1, (l_max+1)²), the coefficients of K_lm Q_lm in
    powers z⁰ … z^l_max, and W_A (2 l_max + 1, (l_max+1)²), which picks A_m out of
    [A_0 … A_lmax, A_−1 … A_−lmax].
    """
    from numpy.polynomial import legendre, polynomial

    n = (l_max + 1) ** 2
    w_q = np.zeros((l_max + 1, n))
    w_a = np.zeros((2 * l_max + 1, n))
    for ell in range(l_max + 1):
        p_l = legendre.leg2poly([0.0] * ell + [1.0])
        for m in range(-ell, ell + 1):
            col = ell * ell + ell + m
            am = abs(m)
            q = polynomial.polyder(p_l, am) if am else p_l
            k = math.sqrt((2 * ell + 1) / (4 * math.pi) * math.factorial(ell - am))
            k /= math.sqrt(math.factorial(ell + am))
            w_q[: len(q), col] = q * k * (math.sqrt(2.0) if m else 1.0)
            w_a[m if m >= 0 else l_max - m, col] = 1.0
    return w_q, w_a


@functools.cache
def _edge_feature_tables(n_max: int) -> dict[str, np.ndarray]:
    """The edge features g_nl Y_lm, ordered (l, n, m) l-major, as products of three matrices.

    ``radial`` (K+1, F) = Chebyshev coefficients of h_nl per feature; ``harmonic_q`` (n_max+1, F)
    and ``harmonic_a`` (2 n_max+1, F) as in :func:`_harmonic_tables`; ``groups`` (F, n_g) sums
    the 2l+1 values of m of each (n, l).
    """
    cheb = radial_tables(n_max)["cheb"]
    w_q, w_a = _harmonic_tables(n_max)
    g_idx, y_idx = [], []
    g0 = 0
    for ell in range(n_max + 1):
        for n in range(n_max - ell + 1):
            g_idx += [g0 + n] * (2 * ell + 1)
            y_idx += range(ell * ell, (ell + 1) ** 2)
        g0 += n_max - ell + 1
    groups = np.zeros((len(g_idx), g0))
    groups[np.arange(len(g_idx)), g_idx] = 1.0
    out = {
        "radial": cheb[:, g_idx],
        "harmonic_q": w_q[:, y_idx],
        "harmonic_a": w_a[:, y_idx],
        "groups": groups,
    }
    for v in out.values():
        v.setflags(write=False)
    return out


# ---------------------------------------------------------------------------------------------
# Differentiable pieces (JAX)


def _chebyshev(t: Array, degree: int) -> Array:
    """T_0(t) … T_degree(t), (E,) → (E, degree + 1), by the three-term recurrence."""
    cols = [jnp.ones_like(t), t]
    for _ in range(2, degree + 1):
        cols.append(2.0 * t * cols[-1] - cols[-2])
    return jnp.stack(cols[: degree + 1], axis=-1)


def _harmonic_factors(unit: Array, l_max: int) -> tuple[Array, Array]:
    """Powers z⁰ … z^l_max (E, l_max+1) and [A_0 … A_lmax, A_−1 … A_−lmax] (E, 2 l_max + 1)."""
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    re, im, zp = [jnp.ones_like(x)], [jnp.zeros_like(x)], [jnp.ones_like(x)]
    for _ in range(l_max):
        re, im = re + [x * re[-1] - y * im[-1]], im + [x * im[-1] + y * re[-1]]
        zp.append(zp[-1] * z)
    return jnp.stack(zp, axis=-1), jnp.stack(re + im[1:], axis=-1)


def radial_basis(r: Array, cutoff: float, n_max: int) -> Array:
    """The orthonormal radial functions g_nl(r) for 0 ≤ r ≤ r_c, (E,) → (E, n_g).

    Ordered (l=0, n=0…n_max), (l=1, n=0…n_max−1), …. Not masked: beyond r_c the values are
    meaningless (:func:`bessel_descriptors` masks them).
    """
    cheb = radial_tables(n_max)["cheb"]
    t = _chebyshev(2.0 * r / cutoff - 1.0, cheb.shape[0] - 1)
    return jnp.matmul(t, jnp.asarray(cheb, r.dtype), precision=_HIGHEST) * cutoff**-1.5


def real_spherical_harmonics(unit: Array, l_max: int) -> Array:
    """Orthonormal real Y_lm of unit vectors (E, 3) → (E, (l_max+1)²), columns (l, m) l-major.

    Σ_m Y_lm(a) Y_lm(b) = (2l+1)/(4π) P_l(a·b). Polynomials in the components: finite, with
    finite gradients, for any input.
    """
    w_q, w_a = _harmonic_tables(l_max)
    zp, a = _harmonic_factors(unit, l_max)
    q = jnp.matmul(zp, jnp.asarray(w_q, unit.dtype), precision=_HIGHEST)
    return q * jnp.matmul(a, jnp.asarray(w_a, unit.dtype), precision=_HIGHEST)


def bessel_descriptors(
    species: Array,
    edge_vectors: Array,
    senders: Array,
    receivers: Array,
    edge_mask: Array,
    num_species: int,
    cutoff: float,
    n_max: int = 4,
) -> Array:
    """NeuralIL's spherical Bessel power spectrum of every atom, (N, n_features).

    Args:
        species: (N,) species indices, negative for padded atoms (their rows are 0).
        edge_vectors: (E, 3) r_j − r_i (Å) of edge j → i (only read where ``edge_mask``).
        senders, receivers: (E,) neighbour j and centre i; out-of-range ids are ignored.
        edge_mask: (E,) True for real edges; edges with r_ij ≥ ``cutoff`` or r_ij = 0 and edges
            from padded atoms contribute nothing.
        num_species: S. cutoff: r_c (Å). n_max: maximum radial/angular order.

    Returns:
        (N, S(S+1)/2 · (n_max+1)(n_max+2)/2) descriptors, species pairs (a ≤ b) row-major, then
        (l, n) l-major, as in NeuralIL. Finite values and gradients for any padding.
    """
    n = species.shape[0]
    dtype = edge_vectors.dtype
    tables = _edge_feature_tables(n_max)
    sender_species = jnp.take(species, jnp.clip(senders, 0, n - 1), axis=0)
    sq = jnp.sum(edge_vectors**2, axis=-1)
    active = (
        edge_mask
        & (senders >= 0)
        & (senders < n)
        & (sender_species >= 0)
        & (sq > 0)
        & (sq < cutoff * cutoff)
    )
    # Double where: inactive edges get the vector (1, 0, 0), so no NaN/inf in value or gradient.
    safe = jnp.where(active[:, None], edge_vectors, jnp.asarray([1.0, 0.0, 0.0], dtype))
    r = jnp.sqrt(jnp.sum(safe**2, axis=-1))
    cheb = _chebyshev(2.0 * r / cutoff - 1.0, tables["radial"].shape[0] - 1)
    cheb = jnp.where(active[:, None], cheb, 0.0)
    zp, a = _harmonic_factors(safe / r[:, None], n_max)

    def mm(x, w):
        return jnp.matmul(x, jnp.asarray(w, dtype), precision=_HIGHEST)

    # g_nl(r) Y_lm(r̂) for every edge, (E, F), F = Σ_l (n_max−l+1)(2l+1).
    feats = mm(cheb, tables["radial"] * cutoff**-1.5)
    feats = feats * mm(zp, tables["harmonic_q"]) * mm(a, tables["harmonic_a"])
    # c[i, a] = Σ_{j→i, species j = a} — one segment sum into N·S rows.
    seg = jnp.where(
        active, receivers * num_species + jnp.maximum(sender_species, 0), n * num_species
    )
    c = jraph.segment_sum(feats, seg, n * num_species).reshape(n, num_species, -1)
    ia, ib = np.triu_indices(num_species)
    pairs = [mm(c[:, a] * c[:, b], tables["groups"]) for a, b in zip(ia, ib, strict=True)]
    return jnp.stack(pairs, axis=1).reshape(n, -1)


def num_descriptors(num_species: int, n_max: int) -> int:
    """S(S+1)/2 · (n_max+1)(n_max+2)/2."""
    return num_species * (num_species + 1) // 2 * (n_max + 1) * (n_max + 2) // 2


# ---------------------------------------------------------------------------------------------
# Model


class ResidualBlock(nn.Module):
    """NeuralIL's ``ResNetDense`` block, or ``ResNetIdentity`` with ``identity=True``.

    h = swish(LN(Dense(w_in)(x))); h = swish(LN(Dense(w_in)(h))); h = LN(Dense(w_out)(h));
    out = swish(h + LN(Dense(w_out)(x))), or swish(h + x) for the identity block (w_in = w_out).
    """

    width_in: int
    width_out: int
    identity: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = swish(nn.LayerNorm()(nn.Dense(self.width_in)(x)))
        h = swish(nn.LayerNorm()(nn.Dense(self.width_in)(h)))
        h = nn.LayerNorm()(nn.Dense(self.width_out)(h))
        short = x if self.identity else nn.LayerNorm()(nn.Dense(self.width_out)(x))
        return swish(h + short)


class BesselNN(nn.Module):
    """NeuralIL-style potential: spherical Bessel descriptors + species embedding + MLP.

    Attributes:
        num_species: S; species indices 0 … S−1, negative = padding.
        cutoff: r_c in Å (NeuralIL EAN: 3.5).
        n_max: maximum order of the descriptors (NeuralIL: 4 → 15 per species pair).
        embed_dim: dimension of the learned embedding of the centre's species (NeuralIL: 2;
            0 disables it).
        widths: widths of the core MLP (NeuralIL EAN: 64:32:16).
        core: "plain" (NeuralIL's ``Core``) or "residual" (NeuralIL 2023's ``ResNetCore``).
        readout_heads: outputs of the last readout layer (1; K for a shallow ensemble, set by
            ``model.ensemble: {kind: shallow, members: K}``): per-atom outputs (N, K).
        property_outputs: P extra per-atom scalar outputs from a separate small head (property
            targets, set by ``loss.properties``); with P > 0 the network returns
            ``{"energy": …, "properties": (N, P)}``, 0 on padded atoms.
    """

    num_species: int
    cutoff: float
    n_max: int = 4
    embed_dim: int = 2
    widths: Sequence[int] = (64, 32, 16)
    core: str = "plain"
    readout_heads: int = 1
    property_outputs: int = 0

    def __post_init__(self):
        hyper.common(self.num_species, self.cutoff)
        hyper.integer("n_max", self.n_max, 0, MAX_N_MAX)
        hyper.integer("embed_dim", self.embed_dim, 0, hyper.MAX_WIDTH)
        hyper.widths("widths", self.widths, allow_empty=False)
        hyper.choice("core", self.core, CORES)
        hyper.readout_heads(self.readout_heads)
        hyper.property_outputs(self.property_outputs)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        species: Array,
        edge_vectors: Array,
        senders: Array,
        receivers: Array,
        edge_mask: Array,
    ) -> Array:
        """Per-atom outputs (N,), exactly 0 on padded atoms; same arguments as ``JAT``."""
        widths = tuple(int(w) for w in self.widths)
        node_mask = species >= 0
        x = bessel_descriptors(
            species,
            edge_vectors,
            senders,
            receivers,
            edge_mask,
            self.num_species,
            self.cutoff,
            self.n_max,
        )
        if self.embed_dim > 0:
            emb = nn.Embed(self.num_species, self.embed_dim, name="embedding")(
                jnp.maximum(species, 0)
            )
            x = jnp.concatenate([x, emb.astype(x.dtype)], axis=-1)
        if self.core == "plain":
            x = swish(nn.Dense(widths[0], name="inlet")(x))
            for k, w in enumerate(widths[1:]):
                x = swish(nn.LayerNorm(name=f"norm_{k + 1}")(nn.Dense(w, name=f"stage_{k + 1}")(x)))
        else:
            pairs = zip(widths, widths[1:] + widths[-1:], strict=True)
            for k, (w_in, w_out) in enumerate(pairs):
                x = ResidualBlock(w_in, w_out, identity=w_in == w_out and k > 0, name=f"block_{k}")(
                    x
                )
        y = nn.Dense(self.readout_heads, name="outlet")(x)
        energy = hyper.heads_output(y, self.readout_heads, node_mask)
        props = None
        if self.property_outputs:
            head = PropertyHead(max(widths[-1], 8), self.property_outputs, name="properties")
            props = head(x)
        return hyper.with_properties(energy, props, node_mask)
