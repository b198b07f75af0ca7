"""Building blocks shared by every jat model.

Activations, smooth cutoff envelopes, radial bases, the masked edge-length helper, masked
segment operations over receivers, and the pyramidal readout MLP. Distances are in Å.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

Array = jax.Array

def swish(x: Array) -> Array:
    """Swish / SiLU, x·sigmoid(x)."""
    return jax.nn.silu(x)


def shifted_softplus(x: Array) -> Array:
    """ssp(x) = softplus(x) − log 2 = max(x, 0) + log(½ + ½ e^(−|x|)).

    Stable for any x (the log's argument lies in (½, 1]; never log(0.5 eˣ + 0.5), which
    overflows), exact to float32 resolution, and with plain exp/log it vectorises on XLA:CPU
    where ``log1p`` does not (1.6× faster than ``softplus(x) − log 2`` there). The two branches
    are split with ``where`` so that the derivative at 0 is the exact ½.
    """
    positive = x > 0
    xp = jnp.where(positive, x, 0.0)
    xn = jnp.where(positive, 0.0, x)
    return xp + jnp.log(0.5 + 0.5 * jnp.exp(xn - xp))


# ---------------------------------------------------------------------------------------------
# Edge geometry


def edge_lengths(edge_vectors: Array, edge_mask: Array) -> Array:
    """Lengths (E,) of edge vectors (E, 3); padded edges get length 0 and a finite gradient.

    The square root is taken of a value that is 1 on padded edges, so neither the value nor the
    gradient is NaN there, whatever the padded vectors hold.
    """
    sq = jnp.sum(edge_vectors**2, axis=-1)
    safe = jnp.where(edge_mask, sq, 1.0)
    return jnp.where(edge_mask, jnp.sqrt(safe), 0.0)


@dataclasses.dataclass(frozen=True)
class HalfEdges:
    """One directed edge per unordered pair {i, j, ±S} of a symmetric edge list.

    vectors (H, 3), senders (H,), receivers (H,) sorted ascending, mask (H,), with H = ⌈E/2⌉.
    Padded entries have senders = receivers = N and mask False.
    """

    vectors: Array
    senders: Array
    receivers: Array
    mask: Array


def half_edges(
    edge_vectors: Array, senders: Array, receivers: Array, edge_mask: Array, num_nodes: int
) -> HalfEdges:
    """Keep one direction of every pair of a symmetric edge list (every j → i with its i → j).

    The kept direction has sender > receiver, or, for an atom and its own periodic image, an
    edge vector that is lexicographically positive (the reverse vector is its exact negation).
    A quantity that depends only on |r_ij| is then computed once per pair instead of twice.
    """
    e = edge_vectors.shape[0]
    senders, receivers = jnp.asarray(senders), jnp.asarray(receivers)
    x, y, z = edge_vectors[:, 0], edge_vectors[:, 1], edge_vectors[:, 2]
    positive = (x > 0) | ((x == 0) & ((y > 0) | ((y == 0) & (z > 0))))
    keep = edge_mask & ((senders > receivers) | ((senders == receivers) & positive))
    (idx,) = jnp.nonzero(keep, size=(e + 1) // 2, fill_value=e)
    valid = idx < e
    idx = jnp.minimum(idx, max(e - 1, 0))
    return HalfEdges(
        vectors=edge_vectors[idx],
        senders=jnp.where(valid, senders[idx], num_nodes),
        receivers=jnp.where(valid, receivers[idx], num_nodes),
        mask=valid,
    )


def symmetric_segment_sum(
    weights: Array, node_values: Array, half: HalfEdges, num_nodes: int
) -> Array:
    """Σ_j w_ij ⊙ v_j over both directions of every half edge → (N, F).

    ``weights`` (H, F) must be symmetric in i and j (a function of |r_ij|); ``node_values``
    (N, F). Equals the segment sum over the full edge list.
    """
    to_receivers = segment_sum(weights * node_values[half.senders], half.receivers, num_nodes)
    to_senders = jraph.segment_sum(weights * node_values[half.receivers], half.senders, num_nodes)
    return to_receivers + to_senders


# ---------------------------------------------------------------------------------------------
# Smooth cutoff envelopes f_c(r): 1 at r = 0 … 0 at r >= r_c, derivative 0 at r_c.


def polynomial_envelope(r: Array, cutoff: float, p: int = 6) -> Array:
    """DimeNet's polynomial envelope; value, first and second derivative vanish at r_c.

    u(d) = 1 − (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) − p(p+1)/2 d^(p+2), d = r / r_c, 0 beyond r_c,
    evaluated in the factored form (1 − d)³ Σ_{k<p} C(k+2, 2) d^k, which stays ≥ 0 in float32
    right up to r_c (the expanded form cancels catastrophically there).
    """
    d = jnp.clip(r / cutoff, 0.0, 1.0)
    q = jnp.zeros_like(d)
    for k in reversed(range(p)):  # Horner: Σ_k C(k+2, 2) d^k
        q = q * d + (k + 1) * (k + 2) // 2
    return jnp.where(r < cutoff, (1.0 - d) ** 3 * q, 0.0)


def cosine_cutoff(r: Array, cutoff: float) -> Array:
    """Behler's cosine cutoff 0.5 (cos(π r / r_c) + 1); value and first derivative vanish at r_c."""
    d = jnp.clip(r / cutoff, 0.0, 1.0)
    return jnp.where(r < cutoff, 0.5 * (jnp.cos(jnp.pi * d) + 1.0), 0.0)


ENVELOPES = {"polynomial": polynomial_envelope, "cosine": cosine_cutoff}


def envelope(name: str, r: Array, cutoff: float) -> Array:
    """Apply the envelope called ``name`` ("polynomial" or "cosine")."""
    try:
        fn = ENVELOPES[name]
    except KeyError:
        raise ValueError(f"unknown envelope {name!r}; choose from {sorted(ENVELOPES)}") from None
    return fn(r, cutoff)


# ---------------------------------------------------------------------------------------------
# Radial bases


def gaussian_rbf(r: Array, centers: Array, gamma: float) -> Array:
    """Gaussian radial basis exp(−γ (r − μ_k)²); r (E,), centres (K,) Å, γ Å⁻² → (E, K)."""
    return jnp.exp(-gamma * (r[:, None] - centers[None, :]) ** 2)


def bessel_rbf(r: Array, cutoff: float, num: int) -> Array:
    """DimeNet's radial Bessel basis √(2/r_c) sin(nπ r/r_c)/r, n = 1…num; r (E,) → (E, num).

    Finite at r = 0 (limit nπ/r_c·√(2/r_c)); padded edges with r = 0 therefore stay finite.
    """
    n = jnp.arange(1, num + 1, dtype=r.dtype)
    x = n[None, :] * jnp.pi * r[:, None] / cutoff
    safe_r = jnp.where(r > 0, r, 1.0)[:, None]
    small = (r <= 0)[:, None]
    val = jnp.where(small, n[None, :] * jnp.pi / cutoff, jnp.sin(x) / safe_r)
    return math.sqrt(2.0 / cutoff) * val


EDGE_FEATURES = ("distance", "inverse", "bessel", "gaussian")


def edge_features(kind: str, r: Array, cutoff: float, num_basis: int, env: Array) -> Array:
    """Edge feature φ(r) (E, D) of the given kind.

    ``"distance"``: r itself (Å), D = 1 (the thesis default). ``"inverse"``: smoothed inverse
    distance f_c(r)/r, D = 1. ``"bessel"``: ``num_basis`` radial Bessel functions. ``"gaussian"``:
    ``num_basis`` Gaussians with centres spread over [0, r_c] and width equal to their spacing.
    """
    if kind == "distance":
        return r[:, None]
    if kind == "inverse":
        return (env / jnp.where(r > 0, r, 1.0))[:, None]
    if kind == "bessel":
        return bessel_rbf(r, cutoff, num_basis)
    if kind == "gaussian":
        centers = jnp.linspace(0.0, cutoff, num_basis, dtype=r.dtype)
        spacing = cutoff / max(num_basis - 1, 1)
        return gaussian_rbf(r, centers, 0.5 / spacing**2)
    raise ValueError(
        f"unknown edge feature {kind!r}; choose 'distance', 'inverse', 'bessel' or 'gaussian'"
    )


# ---------------------------------------------------------------------------------------------
# Segment operations over receivers (jraph), with masks


def segment_sum(data: Array, receivers: Array, num_nodes: int) -> Array:
    """Sum edge data (E, ...) into receivers → (N, ...). Out-of-range (padding) ids are dropped."""
    return jraph.segment_sum(data, receivers, num_nodes, indices_are_sorted=True)


def weighted_segment_softmax(
    logits: Array, weights: Array, receivers: Array, num_nodes: int
) -> Array:
    """Softmax of ``logits`` (E, H) over each receiver's edges, edge e weighted by ``weights[e]``.

    α_e = w_e exp(l_e) / Σ_{e' → i} w_e' exp(l_e'). An edge of weight 0 (beyond the cutoff, or
    padding) contributes nothing, and an edge whose weight goes smoothly to 0 leaves the others
    changing smoothly. A receiver with no weighted edge gets α = 0 everywhere (no NaN).
    """
    active = (weights > 0)[:, None]
    masked = jnp.where(active, logits, -jnp.inf)
    seg_max = jraph.segment_max(masked, receivers, num_nodes, indices_are_sorted=True)
    seg_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(seg_max), seg_max, 0.0))
    at_receiver = jnp.clip(receivers, 0, num_nodes - 1)  # padding ids point past the end
    node_max = seg_max[at_receiver]
    ex = jnp.where(active, jnp.exp(jnp.where(active, logits - node_max, 0.0)), 0.0)
    ex = ex * weights[:, None]
    denom = segment_sum(ex, receivers, num_nodes)
    denom_e = denom[at_receiver]
    ok = denom_e > 0  # double where: no 0 · inf in the gradient of a receiver without weight
    return jnp.where(ok, ex / jnp.where(ok, denom_e, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
# Readout


class PropertyHead(nn.Module):
    """A small per-atom readout of P property channels beside the energy readout:
    Dense(width) → swish → Dense(P), (N, F) → (N, P). Kept apart from the energy readout, so
    that a model without property outputs has exactly the parameters it had before."""

    width: int
    outputs: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = swish(nn.Dense(self.width, name="hidden")(x))
        return nn.Dense(self.outputs, name="out")(h)


class ReadoutMLP(nn.Module):
    """Per-atom pyramidal readout: (Dense → LayerNorm → swish) for each width, then Dense(1).

    Input (N, F) → output (N,), or (N, ``heads``) with several heads (a shallow ensemble:
    the last layer has ``heads`` outputs). The thesis widths are 64:32:16:16.
    """

    widths: Sequence[int] = (64, 32, 16, 16)
    layer_norm: bool = True
    heads: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for w in self.widths:
            x = nn.Dense(w)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = swish(x)
        y = nn.Dense(self.heads)(x)
        return y[..., 0] if self.heads == 1 else y
