"""The pair-symmetric evaluation used by SchNet equals the plain full-edge-list computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jat import graph
from jat.models import SchNet
from jat.models.blocks import (
    cosine_cutoff,
    edge_lengths,
    gaussian_rbf,
    half_edges,
    segment_sum,
    shifted_softplus,
    symmetric_segment_sum,
)

CUTOFF = 5.0


def small_cell_graph(seed: int, pbc=(True, True, True)):
    """A triclinic cell smaller than 2 r_c (atoms see their own images), 7 atoms, padded."""
    rng = np.random.default_rng(seed)
    cell = np.array([[4.0, 0.0, 0.0], [1.0, 4.5, 0.0], [0.5, 0.3, 4.2]])
    pos = rng.uniform(0, 1, (7, 3)) @ cell
    nbrs = graph.neighbor_list(pos, CUTOFF, cell=cell, pbc=pbc)
    s = np.minimum(np.asarray(nbrs.senders), len(pos) - 1)
    r = np.minimum(np.asarray(nbrs.receivers), len(pos) - 1)
    vec = pos[s] - pos[r] + np.asarray(nbrs.shifts) @ cell
    vec = np.where(np.asarray(nbrs.mask)[:, None], vec, 0.0).astype(np.float32)
    return nbrs, jnp.asarray(vec), rng


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True)])
def test_half_edges_cover_each_pair_once(pbc):
    nbrs, vec, _ = small_cell_graph(0, pbc)
    half = half_edges(vec, nbrs.senders, nbrs.receivers, nbrs.mask, 7)
    n_real = int(nbrs.n_edges)
    assert int(half.mask.sum()) * 2 == n_real
    kept = np.asarray(half.vectors)[np.asarray(half.mask)]
    full = np.asarray(vec)[np.asarray(nbrs.mask)]
    both = np.concatenate([kept, -kept])
    key = lambda a: np.round(a, 5)[np.lexsort(np.round(a, 5).T)]  # noqa: E731
    np.testing.assert_allclose(key(both), key(full), atol=1e-5)
    assert np.all(np.diff(np.asarray(half.receivers)[np.asarray(half.mask)]) >= 0)


def test_symmetric_segment_sum_equals_full_sum():
    nbrs, vec, rng = small_cell_graph(1)
    values = jnp.asarray(rng.normal(size=(7, 5)), jnp.float32)
    r_full = edge_lengths(vec, nbrs.mask)
    w_full = jnp.where(nbrs.mask[:, None], jnp.cos(r_full)[:, None] * jnp.arange(1, 6), 0.0)
    s = jnp.minimum(nbrs.senders, 6)
    expected = segment_sum(w_full * values[s], nbrs.receivers, 7)
    half = half_edges(vec, nbrs.senders, nbrs.receivers, nbrs.mask, 7)
    r_half = edge_lengths(half.vectors, half.mask)
    w_half = jnp.where(half.mask[:, None], jnp.cos(r_half)[:, None] * jnp.arange(1, 6), 0.0)
    got = symmetric_segment_sum(w_half, values, half, 7)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_schnet_equals_full_edge_list_reference():
    nbrs, vec, rng = small_cell_graph(2)
    species = jnp.asarray(rng.integers(0, 3, 7), jnp.int32)
    model = SchNet(3, CUTOFF, features=16, interactions=2)
    params = model.init(jax.random.PRNGKey(1), species, vec, nbrs.senders, nbrs.receivers,
                        nbrs.mask)
    y = model.apply(params, species, vec, nbrs.senders, nbrs.receivers, nbrs.mask)

    p = params["params"]

    def dense(layer, x):
        return x @ layer["kernel"] + layer.get("bias", 0.0)

    r = edge_lengths(vec, nbrs.mask)
    fc = jnp.where(nbrs.mask, cosine_cutoff(r, CUTOFF), 0.0)
    rbf = gaussian_rbf(r, jnp.linspace(0.0, CUTOFF, 51), 10.0)
    s = jnp.minimum(nbrs.senders, 6)
    x = p["embedding"]["embedding"][species]
    for t in range(2):
        q = p[f"interaction_{t}"]
        w = dense(q["filter_2"], shifted_softplus(dense(q["filter_1"], rbf))) * fc[:, None]
        conv = segment_sum(dense(q["in2f"], x)[s] * w, nbrs.receivers, 7)
        x = x + dense(q["f2out_2"], shifted_softplus(dense(q["f2out_1"], conv)))
    reference = dense(p["readout_2"], shifted_softplus(dense(p["readout_1"], x)))[:, 0]
    np.testing.assert_allclose(y, reference, rtol=2e-5, atol=2e-6)
