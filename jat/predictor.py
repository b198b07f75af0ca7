"""The predictor: energy, per-atom energies, forces, virial and further outputs of a graph.

One function, :func:`predict`, turns a network's per-atom outputs on a :class:`jat.graph.Graph`
into the physical quantities, for every evaluation path of jat:

    E_g = Σ_{i ∈ g} E_i,   F = −∂E/∂r (eV/Å),   W_g = ∂E/∂ε_g (eV, the virial; stress W/V),

the derivative with respect to a symmetric strain ε of structure g applied to its positions and
cell (:meth:`Graph.deformed`). A leading model axis (several parameter sets on one graph, e.g. a
committee) is :func:`predict_committee`, the same function applied to each parameter set in one
compiled call (:func:`over_members`: one after another on a CPU, vmapped elsewhere). A network
with K readout heads (a shallow ensemble: one shared representation, K last layers) gives the same
leading member axis K from :func:`predict` itself: K per-head energies from one forward pass and
K per-head forces (and virials) from K backward passes of it (the vector-Jacobian product
with each of K one-hot cotangents), so every path treats both kinds of committee alike. The
per-species
composition term Σ μ_Z is not part of the compiled function: it is added in float64 on the host
(:func:`composition_energy`), so large reference energies never pass through float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jat.graph import Graph
from jat.models.energy import EnergyModel


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Predictions:
    """energy (G,) eV and energies (N,) eV without the composition shift; forces (N, 3) eV/Å or
    None; virial (G, 3, 3) eV or None (stress = virial / volume); extras: the network's further
    per-atom outputs by name. With a leading model axis every array has one more axis in front
    (except forces and virial when predicted with ``member_forces=False``: the members' mean)."""

    energy: jax.Array
    energies: jax.Array
    forces: jax.Array | None = None
    virial: jax.Array | None = None
    extras: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)


def predict(
    model: EnergyModel,
    params: Any,
    scale: jax.Array,
    graph: Graph,
    *,
    forces: bool = True,
    stress: bool = False,
    member_forces: bool = True,
) -> Predictions:
    """Predictions of ``model`` with ``params`` (and per-species scale (S,) eV) on ``graph``.

    Jittable and differentiable (training differentiates through it with respect to
    ``params``). ``stress`` computes the virial of every structure of the graph. A model with
    K > 1 readout heads gives predictions with a leading member axis K (see
    :func:`predict_heads`).
    """
    if model.heads > 1:
        return predict_heads(
            model, params, scale, graph, forces=forces, stress=stress, member_forces=member_forces
        )
    n_graphs = graph.n_graphs
    energy = _total_energy(model, params, scale, graph, stress)
    strain = jnp.zeros((n_graphs, 3, 3), graph.positions.dtype)
    f = virial = None
    if forces or stress:
        argnums = (0, 1) if stress else (0,)
        (_, (e, extras)), grads = jax.value_and_grad(energy, argnums, has_aux=True)(
            graph.positions, strain
        )
        if forces:
            f = -grads[0]
        if stress:
            virial = grads[1]
    else:
        _, (e, extras) = energy(graph.positions, strain)
    total = jax.ops.segment_sum(e, graph.node_graph, n_graphs)
    return Predictions(energy=total, energies=e, forces=f, virial=virial, extras=extras)


def predict_heads(
    model: EnergyModel,
    params: Any,
    scale: jax.Array,
    graph: Graph,
    *,
    forces: bool = True,
    stress: bool = False,
    member_forces: bool = True,
) -> Predictions:
    """:func:`predict` of a model with K readout heads: every output with a leading axis K
    (energy (K, G), energies (K, N), forces (K, N, 3), virial (K, G, 3, 3); extras, which the
    heads share, broadcast to K). One forward pass; forces and virials from the K rows of the
    Jacobian of the heads' totals, one backward pass per head. ``member_forces=False``:
    forces (N, 3) and virial (G, 3, 3) of the heads' mean only, from one backward pass (about
    one model's cost; the energies keep their member axis)."""
    n_graphs, heads = graph.n_graphs, model.heads
    energy = _total_energy(model, params, scale, graph, stress)
    strain = jnp.zeros((n_graphs, 3, 3), graph.positions.dtype)
    f = virial = None
    if forces or stress:
        if stress:
            totals, vjp, (e, extras) = jax.vjp(energy, graph.positions, strain, has_aux=True)
        else:
            totals, vjp, (e, extras) = jax.vjp(
                lambda r: energy(r, strain), graph.positions, has_aux=True
            )
        if member_forces:
            # K backward passes, unrolled: on XLA:CPU 1.2x faster than one vmapped pass over
            # K one-hot cotangents, and 2.5x faster under the training gradient (SchNet, EAN)
            rows = [vjp(jnp.eye(heads, dtype=totals.dtype)[k]) for k in range(heads)]
            grads = jax.tree.map(lambda *g: jnp.stack(g), *rows)
        else:  # the gradient of the heads' mean: one backward pass
            grads = vjp(jnp.full((heads,), 1.0 / heads, totals.dtype))
        if forces:
            f = -grads[0]
        if stress:
            virial = grads[1]
    else:
        _, (e, extras) = energy(graph.positions, strain)
    total = jax.ops.segment_sum(e, graph.node_graph, n_graphs).T
    extras = {k: jnp.broadcast_to(v, (heads, *jnp.shape(v))) for k, v in extras.items()}
    return Predictions(energy=total, energies=e.T, forces=f, virial=virial, extras=extras)


def _total_energy(model: EnergyModel, params: Any, scale: jax.Array, graph: Graph, stress: bool):
    """energy(positions, strain) -> (Σ_i E_i, (E_i, extras)): the graph's total energy (K
    totals for K readout heads) as a function of the positions and (with ``stress``) of a
    strain (G, 3, 3) applied to the graph, for the predictor to differentiate."""

    def energy(positions, strain):
        g = dataclasses.replace(graph, positions=positions)
        if stress:
            g = g.deformed(strain)
        e, extras = model.outputs(params, scale, g)
        return jnp.sum(e, axis=0), (e, extras)

    return energy


def over_members(fn, members: Any) -> Any:
    """``fn`` applied to each member's slice of ``members`` (a pytree whose leaves share a
    leading axis K), the results stacked on a leading axis K, in one traced computation.

    On a CPU the members run one after another (``lax.map``): XLA:CPU runs K members vmapped
    over one graph slower than K calls one by one (their gathers and segment sums gain a batch
    axis; ``benchmarks/committee.py``: JAT 7 × 48 energy + forces on the EAN box 6.7× one
    member's time vmapped, 3.8× mapped). On other backends they are vmapped, so a GPU runs them
    side by side. The results are the same either way (to float rounding)."""
    k = jax.tree.leaves(members)[0].shape[0]
    if jax.default_backend() == "cpu":
        return jax.lax.map(fn, members)
    return jax.lax.map(fn, members, batch_size=k)


def predict_committee(
    model: EnergyModel,
    params: Any,
    scale: jax.Array,
    graph: Graph,
    *,
    forces: bool = True,
    stress: bool = False,
    member_forces: bool = True,
) -> Predictions:
    """:func:`predict` for K parameter sets stacked on a leading axis of every leaf of
    ``params``, on one graph (shared, not copied); every output gains a leading axis K.
    ``scale`` is (S,) shared by the members or (K, S), one row per member.
    ``member_forces=False`` averages forces and virial over the members (no saving).
    The members are evaluated by :func:`over_members`."""

    def one(member):
        p, s = member
        return predict(model, p, scale if s is None else s, graph, forces=forces, stress=stress)

    p = over_members(one, (params, scale if jnp.ndim(scale) == 2 else None))
    if member_forces:
        return p
    return dataclasses.replace(
        p,
        forces=None if p.forces is None else jnp.mean(p.forces, axis=0),
        virial=None if p.virial is None else jnp.mean(p.virial, axis=0),
    )


def predict_any(
    model: EnergyModel,
    params: Any,
    scale: jax.Array,
    graph: Graph,
    *,
    committee: bool,
    forces: bool = True,
    stress: bool = False,
    member_forces: bool = True,
) -> Predictions:
    """:func:`predict_committee` when ``committee`` (params with a leading member axis), else
    :func:`predict`: what a path that serves both single potentials and committees calls. A
    shallow ensemble (K readout heads, one parameter set) is ``committee=False``: its
    predictions get their member axis from the heads."""
    run = predict_committee if committee else predict
    return run(
        model, params, scale, graph, forces=forces, stress=stress, member_forces=member_forces
    )


def composition_energy(energy_shift: np.ndarray, species: np.ndarray) -> Any:
    """Σ_i μ_Z(i) over the real atoms (species ≥ 0) in float64, eV (host): a float for a
    shift (S,), a (K,) array for one row of shifts per committee member (K, S)."""
    species = np.asarray(species)
    real = species[species >= 0]
    shift = np.asarray(energy_shift, np.float64)
    if shift.ndim == 2:
        return np.sum(shift[:, real], axis=1)
    return float(np.sum(shift[real]))


def stress_from_virial(virial: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Stress σ = W / V (3, 3) eV/Å³ from the virial W (eV) and the cell (Å)."""
    volume = abs(float(np.linalg.det(np.asarray(cell, np.float64))))
    return np.asarray(virial, np.float64) / volume


__all__ = [
    "Predictions",
    "composition_energy",
    "predict",
    "predict_any",
    "over_members",
    "predict_committee",
    "predict_heads",
    "stress_from_virial",
]
