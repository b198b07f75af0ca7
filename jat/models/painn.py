"""PaiNN (Schütt, Unke & Gastegger, ICML 2021): equivariant message passing with scalar features
s_i (N, F) and vector features v_i (N, 3, F).

For every edge j → i (sender j, receiver i) with r_ij = r_j − r_i, r̂_ij = r_ij / |r_ij|:

    message:  [x_s, x_vv, x_vs] = φ(s_j) ⊙ W(|r_ij|),   φ = Dense(3F) ∘ silu ∘ Dense(F),
              W = Dense(3F)(RBF(|r_ij|)) · f_c(|r_ij|)
              s_i ← s_i + Σ_j x_s,     v_i ← v_i + Σ_j (v_j ⊙ x_vv + x_vs ⊗ r̂_ij)
    update:   [a_vv, a_sv, a_ss] = Dense(3F) ∘ silu ∘ Dense(F) ([s_i, ‖V v_i‖])
              v_i ← v_i + a_vv ⊙ U v_i,  s_i ← s_i + a_ss + a_sv ⊙ ⟨U v_i, V v_i⟩

with U, V linear maps of the feature axis (no bias, so they commute with rotations), RBF the
sinc basis sin(nπ r/r_c)/r, n = 1 … num_rbf (:func:`jat.models.blocks.bessel_rbf`), and the cosine
cutoff f_c, whose value and slope vanish at r_c: energy and forces are continuous as a neighbour
crosses the cutoff. Vector features start at zero; s_i starts as an embedding of the species.

The filters depend on |r_ij| alone, so they are evaluated once per atom pair and used for both
directions (the edge list must be symmetric, as ``jat.graph`` makes it; see
:func:`jat.models.blocks.half_edges`). The energy readout is Dense(1) ∘ silu ∘ Dense(F/2) on s.
With ``dipole_head`` the network also returns per-atom charges q_i (N,) and atomic dipoles μ_i
(N, 3) from two gated equivariant blocks (the paper's dipole model: μ = Σ_i μ_i + q_i r_i, formed
from positions by the caller). Norms of vectors are taken as sqrt(|x|² + ε), so that zero
vectors (isolated or padded atoms, the first layer) give finite values and gradients.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from jat.models import hyper
from jat.models.blocks import (
    HalfEdges,
    PropertyHead,
    bessel_rbf,
    cosine_cutoff,
    edge_lengths,
    half_edges,
    swish,
)

Array = jax.Array

#: ε in the norms sqrt(|x|² + ε) of vector features (feature units squared).
NORM_EPS = 1e-8


def vector_norm(v: Array) -> Array:
    """Norm over the spatial axis of vector features v (..., 3, F) → (..., F), finite gradient
    everywhere (sqrt(|v|² + ε), ε = :data:`NORM_EPS`)."""
    return jnp.sqrt(jnp.sum(v * v, axis=-2) + NORM_EPS)


def unit_vectors(edge_vectors: Array, r: Array, edge_mask: Array) -> Array:
    """r̂ (E, 3) of edge vectors (E, 3) with lengths r (E,); 0 on masked or zero-length edges,
    with a zero gradient there (no division by 0, whatever the padded vectors hold)."""
    ok = edge_mask & (r > 0)
    safe = jnp.where(ok, r, 1.0)[:, None]
    return jnp.where(ok[:, None], edge_vectors / safe, 0.0)


class PaiNNMessage(nn.Module):
    """The message block: residual updates (Δs (N, F), Δv (N, 3, F)) from the neighbours."""

    features: int

    @nn.compact
    def __call__(
        self, s: Array, v: Array, filters: Array, unit: Array, half: HalfEdges
    ) -> tuple[Array, Array]:
        """s (N, F), v (N, 3, F); per half edge j → i: filters W(r_ij) f_c (H, 3F) and the unit
        vector r̂_ij (H, 3). Messages go both ways, i → j with r̂_ji = −r̂_ij."""
        n, f = s.shape
        phi = nn.Dense(f, name="phi_1")(s)
        phi = nn.Dense(3 * f, name="phi_2")(swish(phi))
        # j → i into the (sorted) receivers, then i → j into the senders
        ways = (
            (half.senders, half.receivers, 1.0, True),
            (half.receivers, half.senders, -1.0, False),
        )
        ds, dv = jnp.zeros_like(s), jnp.zeros_like(v)
        for src, dst, sign, is_sorted in ways:
            x_s, x_vv, x_vs = jnp.split(phi[src] * filters, 3, axis=-1)
            msg = v[src] * x_vv[:, None, :] + (sign * x_vs)[:, None, :] * unit[:, :, None]
            ds = ds + jraph.segment_sum(x_s, dst, n, indices_are_sorted=is_sorted)
            dv = dv + jraph.segment_sum(msg, dst, n, indices_are_sorted=is_sorted)
        return ds, dv


class PaiNNUpdate(nn.Module):
    """The update block: residual updates (Δs (N, F), Δv (N, 3, F)) within each atom."""

    features: int

    @nn.compact
    def __call__(self, s: Array, v: Array) -> tuple[Array, Array]:
        f = self.features
        uv = nn.Dense(f, use_bias=False, name="U")(v)
        vv = nn.Dense(f, use_bias=False, name="V")(v)
        ctx = jnp.concatenate([s, vector_norm(vv)], axis=-1)
        a = nn.Dense(f, name="mix_1")(ctx)
        a = nn.Dense(3 * f, name="mix_2")(swish(a))
        a_vv, a_sv, a_ss = jnp.split(a, 3, axis=-1)
        ds = a_ss + a_sv * jnp.sum(uv * vv, axis=-2)
        return ds, a_vv[:, None, :] * uv


class GatedEquivariant(nn.Module):
    """Gated equivariant block (the paper's Fig. 3): (s (N, F), v (N, 3, F)) → (N, K), (N, 3, K).

    s' = Dense(K) ∘ silu ∘ Dense(F) ([s, ‖V v‖]) split into (s_out, gate); v_out = gate ⊙ W v.
    """

    out_features: int
    activation: bool = True

    @nn.compact
    def __call__(self, s: Array, v: Array) -> tuple[Array, Array]:
        k = self.out_features
        w_v = nn.Dense(k, use_bias=False, name="W")(v)
        v_v = nn.Dense(s.shape[-1], use_bias=False, name="V")(v)
        ctx = jnp.concatenate([s, vector_norm(v_v)], axis=-1)
        h = nn.Dense(s.shape[-1], name="gate_1")(ctx)
        h = nn.Dense(2 * k, name="gate_2")(swish(h))
        s_out, gate = jnp.split(h, 2, axis=-1)
        if self.activation:
            s_out = swish(s_out)
        return s_out, gate[:, None, :] * w_v


class PaiNN(nn.Module):
    """PaiNN per-atom outputs: energies y_i (N,), or with ``dipole_head`` the mapping
    ``{"energy": (N,), "charges": (N,), "atomic_dipoles": (N, 3)}``.

    Attributes:
        num_species: number of species (indices 0 … num_species−1, negative = padding).
        cutoff: r_c in Å (cosine cutoff).
        features: feature width F of s and v (paper: 128).
        interactions: number of message + update blocks (paper: 3).
        num_rbf: number of sinc radial basis functions (paper: 20).
        shared_filters: one filter network W(r) for every interaction instead of one each.
        dipole_head: also return per-atom charges and atomic dipoles (raw network outputs,
            rotating with the molecule) from two gated equivariant blocks.
        readout_heads: outputs of the last readout layer (1; K for a shallow ensemble, set by
            ``model.ensemble: {kind: shallow, members: K}``): per-atom outputs (N, K).
        property_outputs: P extra per-atom scalar outputs from a separate small head (property
            targets, set by ``loss.properties``); with P > 0 the network returns
            ``{"energy": …, "properties": (N, P)}``, 0 on padded atoms.
    """

    num_species: int
    cutoff: float
    features: int = 128
    interactions: int = 3
    num_rbf: int = 20
    shared_filters: bool = False
    dipole_head: bool = False
    readout_heads: int = 1
    property_outputs: int = 0

    def __post_init__(self):
        hyper.common(self.num_species, self.cutoff)
        hyper.integer("features", self.features, 2, hyper.MAX_WIDTH)
        hyper.integer("interactions", self.interactions, 1, hyper.MAX_LAYERS)
        hyper.integer("num_rbf", self.num_rbf, 1, hyper.MAX_BASIS)
        hyper.boolean("shared_filters", self.shared_filters)
        hyper.boolean("dipole_head", self.dipole_head)
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
    ) -> Array | dict[str, Array]:
        """Per-atom outputs; same arguments as :class:`jat.models.JAT`.

        Args:
            species: (N,) int species indices, negative for padded atoms.
            edge_vectors: (E, 3) r_j − r_i in Å (only read where ``edge_mask``).
            senders, receivers: (E,) int atom indices j and i; receivers sorted ascending.
            edge_mask: (E,) bool, True for real edges.

        Returns:
            (N,) outputs y_i, exactly 0 on padded atoms; with ``dipole_head`` a dict with
            ``energy`` (N,), ``charges`` (N,) and ``atomic_dipoles`` (N, 3), all 0 on padding;
            with ``property_outputs`` P > 0 also ``properties`` (N, P).
        """
        f, t = int(self.features), int(self.interactions)
        n = species.shape[0]
        node_mask = species >= 0
        # Filters depend on |r_ij| only: evaluate them once per pair, message both ways.
        half = half_edges(edge_vectors, senders, receivers, edge_mask, n)
        r = edge_lengths(half.vectors, half.mask)
        fc = jnp.where(half.mask, cosine_cutoff(r, self.cutoff), 0.0)
        unit = unit_vectors(half.vectors, r, half.mask)
        rbf = bessel_rbf(r, self.cutoff, int(self.num_rbf))
        blocks = 1 if self.shared_filters else t
        filters = nn.Dense(blocks * 3 * f, name="filters")(rbf) * fc[:, None]
        filters = jnp.split(filters, blocks, axis=-1)
        s = nn.Embed(self.num_species, f, name="embedding")(jnp.maximum(species, 0))
        v = jnp.zeros((n, 3, f), s.dtype)
        for k in range(t):
            w = filters[0 if self.shared_filters else k]
            ds, dv = PaiNNMessage(f, name=f"message_{k}")(s, v, w, unit, half)
            s, v = s + ds, v + dv
            ds, dv = PaiNNUpdate(f, name=f"update_{k}")(s, v)
            s, v = s + ds, v + dv
        y = nn.Dense(f // 2, name="readout_1")(s)
        y = nn.Dense(self.readout_heads, name="readout_2")(swish(y))
        energy = hyper.heads_output(y, self.readout_heads, node_mask)
        props = None
        if self.property_outputs:
            props = PropertyHead(f // 2, self.property_outputs, name="properties")(s)
        if not self.dipole_head:
            return hyper.with_properties(energy, props, node_mask)
        hs, hv = GatedEquivariant(f // 2, name="dipole_1")(s, v)
        q, mu = GatedEquivariant(1, activation=False, name="dipole_2")(hs, hv)
        out = {
            "energy": energy,
            "charges": jnp.where(node_mask, q[:, 0], 0.0),
            "atomic_dipoles": jnp.where(node_mask[:, None], mu[:, :, 0], 0.0),
        }
        if props is not None:
            out["properties"] = jnp.where(node_mask[:, None], props, 0.0)
        return out
