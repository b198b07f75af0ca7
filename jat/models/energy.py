"""Per-atom energies of a potential: its network's outputs, scaled, plus any fixed pair term.

Every path that evaluates a potential (``Potential.compute``, the ASE calculator, JAX-MD, the
training step, the benchmarks) calls :meth:`EnergyModel.atomic_energies`, so what a model is
trained on is exactly what MD integrates.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jat.models.repulsion import ZBL


@dataclasses.dataclass(frozen=True)
class EnergyModel:
    """network: Flax module mapping a graph to per-atom outputs y_i; repulsion: None or ZBL."""

    network: nn.Module
    repulsion: ZBL | None = None

    def atomic_energies(
        self,
        params,
        scale: jax.Array,
        species: jax.Array,
        edge_vectors: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        edge_mask: jax.Array,
    ) -> jax.Array:
        """E_i = s_Z y_i + V_rep,i in eV, (N,), 0 on padded atoms (species < 0).

        scale (S,) s_Z in eV; the graph as the models take it (edge_vectors (E, 3) Å, senders
        and receivers (E,) sorted by receiver, edge_mask (E,)). The composition shift μ_Z is
        not included.
        """
        y = self.network.apply(params, species, edge_vectors, senders, receivers, edge_mask)
        e = y * scale[jnp.maximum(species, 0)]
        if self.repulsion is not None:
            e = e + self.repulsion.atomic_energies(
                species, edge_vectors, senders, receivers, edge_mask
            )
        return jnp.where(species >= 0, e, 0.0)
