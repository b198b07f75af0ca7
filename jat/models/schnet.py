"""SchNet (Schütt et al., NeurIPS 2017): continuous-filter convolutions over Gaussian radial bases.

Interaction block:  x ← x + Dense(ssp(Dense(cfconv(x)))),
cfconv_i = Σ_j (W x_j) ⊙ Filter(r_ij),  Filter = Dense(ssp(Dense(RBF(r_ij)))) · f_c(r_ij),
with the cosine cutoff f_c and the shifted softplus ssp. Optional normalisation after each block.

The filter network, most of SchNet's cost, depends on |r_ij| alone, so it is evaluated once per
atom pair and its output used for both directions (the edge list must be symmetric, as
``jat.graph`` makes it).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jat.models import hyper
from jat.models.blocks import (
    HalfEdges,
    PropertyHead,
    cosine_cutoff,
    edge_lengths,
    gaussian_rbf,
    half_edges,
    shifted_softplus,
    symmetric_segment_sum,
)

Array = jax.Array

NORMS = (None, "layernorm", "rmsnorm")


class SchNetInteraction(nn.Module):
    """One SchNet interaction block (returns the residual update v, shape (N, F))."""

    features: int
    filters: int

    @nn.compact
    def __call__(self, x: Array, rbf: Array, fc: Array, half: HalfEdges) -> Array:
        n = x.shape[0]
        w = nn.Dense(self.filters, name="filter_1")(rbf)
        w = nn.Dense(self.filters, name="filter_2")(shifted_softplus(w)) * fc[:, None]
        xf = nn.Dense(self.filters, use_bias=False, name="in2f")(x)
        conv = symmetric_segment_sum(w, xf, half, n)
        v = nn.Dense(self.features, name="f2out_1")(conv)
        return nn.Dense(self.features, name="f2out_2")(shifted_softplus(v))


class SchNet(nn.Module):
    """SchNet per-atom outputs y_i.

    Attributes:
        num_species: number of species (indices 0 … num_species−1, negative = padding).
        cutoff: r_c in Å (cosine cutoff).
        features: atom feature width (paper: 64; SchNetPack benchmarks: 128).
        interactions: number of interaction blocks (paper: 3; 6 for MD17).
        num_rbf: number of Gaussians; default: centres every 0.1 Å over [0, r_c].
        gamma: Gaussian width parameter γ in Å⁻² (paper: 10); default 0.5/spacing² when
            ``num_rbf`` is given, else 10.
        filters: filter width (default = features).
        norm: None, "layernorm" or "rmsnorm", applied after every interaction.
        readout_heads: outputs of the last readout layer (1; K for a shallow ensemble, set by
            ``model.ensemble: {kind: shallow, members: K}``): per-atom outputs (N, K).
        property_outputs: P extra per-atom scalar outputs from a separate small head (property
            targets, set by ``loss.properties``); with P > 0 the network returns
            ``{"energy": …, "properties": (N, P)}``, 0 on padded atoms.
    """

    num_species: int
    cutoff: float
    features: int = 64
    interactions: int = 3
    num_rbf: int | None = None
    gamma: float | None = None
    filters: int | None = None
    norm: str | None = None
    readout_heads: int = 1
    property_outputs: int = 0

    def __post_init__(self):
        hyper.common(self.num_species, self.cutoff)
        hyper.integer("features", self.features, 2, hyper.MAX_WIDTH)
        hyper.integer("interactions", self.interactions, 1, hyper.MAX_LAYERS)
        if self.num_rbf is not None:
            hyper.integer("num_rbf", self.num_rbf, 1, hyper.MAX_BASIS)
        if self.gamma is not None:
            hyper.positive_number("gamma", self.gamma)
        if self.filters is not None:
            hyper.integer("filters", self.filters, 1, hyper.MAX_WIDTH)
        hyper.choice("norm", self.norm, NORMS)
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
        """Per-atom outputs (N,) (a dict with ``properties`` (N, P) too when
        ``property_outputs`` > 0); same arguments as :class:`jat.models.JAT`."""
        node_mask = species >= 0
        # The filter depends on |r_ij| only: evaluate it once per pair, message both ways.
        half = half_edges(edge_vectors, senders, receivers, edge_mask, species.shape[0])
        r = edge_lengths(half.vectors, half.mask)
        fc = jnp.where(half.mask, cosine_cutoff(r, self.cutoff), 0.0)
        if self.num_rbf is None:
            num_rbf = int(round(self.cutoff / 0.1)) + 1
            gamma = 10.0 if self.gamma is None else self.gamma
        else:
            num_rbf = self.num_rbf
            spacing = self.cutoff / max(num_rbf - 1, 1)
            gamma = 0.5 / spacing**2 if self.gamma is None else self.gamma
        centers = jnp.linspace(0.0, self.cutoff, num_rbf, dtype=r.dtype)
        rbf = gaussian_rbf(r, centers, gamma)
        filters = self.filters or self.features
        x = nn.Embed(self.num_species, self.features, name="embedding")(jnp.maximum(species, 0))
        for t in range(self.interactions):
            x = x + SchNetInteraction(self.features, filters, name=f"interaction_{t}")(
                x, rbf, fc, half
            )
            if self.norm == "layernorm":
                x = nn.LayerNorm(name=f"norm_{t}")(x)
            elif self.norm == "rmsnorm":
                x = nn.RMSNorm(name=f"norm_{t}")(x)
        y = nn.Dense(self.features // 2, name="readout_1")(x)
        y = nn.Dense(self.readout_heads, name="readout_2")(shifted_softplus(y))
        energy = hyper.heads_output(y, self.readout_heads, node_mask)
        props = None
        if self.property_outputs:
            head = PropertyHead(self.features // 2, self.property_outputs, name="properties")
            props = head(x)
        return hyper.with_properties(energy, props, node_mask)
