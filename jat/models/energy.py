"""Per-atom energies of a potential from a :class:`jat.graph.Graph`: its network's outputs,
scaled, plus any fixed pair term.

Every path that evaluates a potential (``Potential.compute``, the ASE calculator, JAX-MD, the
training step, the benchmarks) calls :meth:`EnergyModel.outputs` through
:func:`jat.predictor.predict`, so what a model is trained on is exactly what MD integrates.

The networks themselves (:mod:`jat.models`) take the graph's species and edge vectors, never
absolute positions: translation invariance holds by construction. A network returns its per-atom
energy outputs y_i (N,), or a mapping with ``"energy"`` (N,) and further named per-atom outputs
(vectors, charges, …), which are passed through as ``extras``. A network with K readout heads
(a shallow ensemble, ``readout_heads`` = K) returns (N, K): K per-atom energies of one shared
representation, scaled and shifted alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jat.graph import Graph
from jat.models.repulsion import ZBL


@dataclasses.dataclass(frozen=True)
class EnergyModel:
    """network: Flax module mapping a graph's edges to per-atom outputs y_i; repulsion: None or
    a ZBL pair term."""

    network: nn.Module
    repulsion: ZBL | None = None

    @property
    def heads(self) -> int:
        """K, the network's readout heads (1 for a single output per atom)."""
        return int(getattr(self.network, "readout_heads", 1))

    def outputs(
        self, params, scale: jax.Array, graph: Graph
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """E_i = s_Z y_i + V_rep,i in eV, (N,) (or (N, K) for K readout heads), 0 on padded
        atoms, and the network's further outputs (a dict, empty for the energy-only models).

        scale (S,) s_Z in eV. The composition shift μ_Z is not included (it is added in float64
        by the caller, :func:`jat.predictor.composition_energy`).
        """
        vectors = graph.edge_vectors()
        y = self.network.apply(
            params, graph.species, vectors, graph.senders, graph.receivers, graph.edge_mask
        )
        extras: dict[str, jax.Array] = {}
        if isinstance(y, Mapping):
            extras = {k: v for k, v in y.items() if k != "energy"}
            y = y["energy"]
        species = graph.species
        s = scale[jnp.maximum(species, 0)]
        real = species >= 0
        if y.ndim == 2:  # K heads: (N, K)
            s, real = s[:, None], real[:, None]
        e = y * s
        if self.repulsion is not None:
            rep = self.repulsion.atomic_energies(
                species, vectors, graph.senders, graph.receivers, graph.edge_mask
            )
            e = e + (rep[:, None] if y.ndim == 2 else rep)
        return jnp.where(real, e, 0.0), extras

    def atomic_energies(self, params, scale: jax.Array, graph: Graph) -> jax.Array:
        """(N,) per-atom energies E_i in eV (see :meth:`outputs`)."""
        return self.outputs(params, scale, graph)[0]
