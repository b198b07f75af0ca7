"""Building blocks: activations, envelopes, segment softmax, radial features, readout."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jat.models import JAT
from jat.models.blocks import (
    ENVELOPES,
    ReadoutMLP,
    edge_features,
    edge_lengths,
    envelope,
    shifted_softplus,
    weighted_segment_softmax,
)

CUTOFF = 5.0


def test_shifted_softplus_is_stable_and_exact():
    x = np.array([-1000.0, -50.0, -1.0, 0.0, 1e-3, 1.0, 30.0, 1000.0])
    for dtype in (np.float32, np.float64):
        with jax.enable_x64(dtype == np.float64):
            y = np.asarray(shifted_softplus(jnp.asarray(x, dtype)))
            g = np.asarray(jax.vmap(jax.grad(shifted_softplus))(jnp.asarray(x, dtype)))
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(g))
        expected = np.logaddexp(0.0, x) - math.log(2.0)
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(g, 0.5 * (1.0 + np.tanh(0.5 * x)), rtol=1e-6, atol=1e-12)
    assert float(shifted_softplus(jnp.float32(0.0))) == 0.0


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_envelope_limits(name):
    with jax.enable_x64(True):
        f = jax.jit(lambda r: envelope(name, r, CUTOFF))
        df = jax.grad(f)
        d2f = jax.grad(df)
        assert float(f(0.0)) == pytest.approx(1.0, abs=1e-12)
        assert float(df(0.0)) == pytest.approx(0.0, abs=1e-12)
        for r in (CUTOFF, CUTOFF + 1e-9, CUTOFF + 0.3, 100.0):
            assert float(f(r)) == 0.0 and float(df(r)) == 0.0, r
        # Approaching r_c from below: value and slope go to 0 continuously.
        assert abs(float(f(CUTOFF - 1e-6))) < 1e-10
        assert abs(float(df(CUTOFF - 1e-6))) < 1e-5
        if name == "polynomial":  # C²: the curvature vanishes at r_c as well
            assert abs(float(d2f(CUTOFF - 1e-6))) < 1e-3
        r = jnp.linspace(0.0, CUTOFF, 501)
        values = np.asarray(jax.vmap(f)(r))
        assert np.all(np.diff(values) <= 1e-12) and np.all((values >= 0) & (values <= 1))


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_envelope_nonnegative_in_float32(name):
    """Within ~1 % of r_c the envelope must not round to negative values (cancellation)."""
    r = jnp.float32(CUTOFF) * (1.0 - jnp.logspace(-7, -2, 2000, dtype=jnp.float32))
    values = np.asarray(envelope(name, r, CUTOFF))
    assert values.dtype == np.float32
    assert np.all(values >= 0.0), f"min {values.min():.3g} at r = {float(r[values.argmin()])}"


def test_unknown_envelope():
    with pytest.raises(ValueError, match="unknown envelope"):
        envelope("step", jnp.ones(3), CUTOFF)


def _softmax(logits, weights, receivers, n):
    return np.asarray(
        weighted_segment_softmax(
            jnp.asarray(logits), jnp.asarray(weights), jnp.asarray(receivers), n
        )
    )


def _per_receiver_sum(alpha, receivers, n):
    out = np.zeros((n + 1, alpha.shape[1]))  # row n collects out-of-range (padding) receivers
    np.add.at(out, np.minimum(receivers, n), alpha)
    return out[:n]


def test_weighted_segment_softmax():
    rng = np.random.default_rng(0)
    n, heads = 6, 3
    receivers = np.array([0, 0, 0, 1, 1, 3, 3, 3, 3, 5, 6, 6], np.int32)  # 6 = padding
    weights = rng.uniform(0.1, 1.0, len(receivers)).astype(np.float32)
    weights[[2, 8, 9, 10, 11]] = 0.0  # receiver 5 has only a zero-weight edge; 10, 11 padding
    logits = rng.normal(size=(len(receivers), heads)).astype(np.float32) * 30
    alpha = _softmax(logits, weights, receivers, n)
    assert np.all(np.isfinite(alpha))
    sums = _per_receiver_sum(alpha, receivers, n)
    np.testing.assert_allclose(sums[[0, 1, 3]], 1.0, rtol=1e-6)
    assert np.all(sums[[2, 4, 5]] == 0.0)  # no (weighted) edges: 0, not NaN
    assert np.all(alpha[weights == 0] == 0.0)
    # α_e ∝ w_e exp(l_e) within a receiver.
    sel = receivers == 1
    expected = weights[sel, None] * np.exp(logits[sel] - logits[sel].max(0))
    np.testing.assert_allclose(alpha[sel], expected / expected.sum(0), rtol=1e-5)
    # Zero-weight edges are ignored whatever their logits.
    garbage = logits.copy()
    garbage[weights == 0] = [1e30, -1e30, np.inf]
    np.testing.assert_array_equal(_softmax(garbage, weights, receivers, n), alpha)


def test_weighted_segment_softmax_gradients_are_finite():
    """Receiver 1's only edge has weight 0 (an envelope that rounded to 0 just inside r_c)."""
    receivers = jnp.array([0, 0, 1, 2, 2], jnp.int32)
    weights = jnp.array([0.5, 0.0, 0.0, 1.0, 1.0])

    def loss(logits, w):
        alpha = weighted_segment_softmax(logits, w, receivers, 4)
        return jnp.sum(alpha * jnp.arange(1.0, 6.0)[:, None])

    g_l, g_w = jax.grad(loss, argnums=(0, 1))(jnp.zeros((5, 2)), weights)
    assert np.all(np.isfinite(g_l)) and np.all(np.isfinite(g_w))


def test_edge_lengths_of_padded_edges():
    vec = jnp.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1e6, 1e6, 1e6]])
    mask = jnp.array([True, False, False])
    np.testing.assert_array_equal(edge_lengths(vec, mask), [5.0, 0.0, 0.0])
    grad = jax.grad(lambda v: edge_lengths(v, mask).sum())(vec)
    np.testing.assert_allclose(grad, [[0.6, 0.8, 0.0], [0, 0, 0], [0, 0, 0]], rtol=1e-6)


@pytest.mark.parametrize("kind", ["distance", "inverse", "bessel", "gaussian"])
def test_edge_features_finite_at_zero(kind):
    r = jnp.array([0.0, 0.5, CUTOFF - 1e-3, CUTOFF, 7.0])
    env = envelope("polynomial", r, CUTOFF)
    phi = edge_features(kind, r, CUTOFF, 8, env)
    assert phi.shape == (5, 1 if kind in ("distance", "inverse") else 8)
    grad = jax.grad(lambda x: edge_features(kind, x, CUTOFF, 8, env).sum())(r)
    assert np.all(np.isfinite(phi)) and np.all(np.isfinite(grad))


def test_unknown_edge_feature():
    with pytest.raises(ValueError, match="unknown edge feature"):
        edge_features("fourier", jnp.ones(2), CUTOFF, 8, jnp.ones(2))


def _dense_kernel_shapes(params):
    layers = sorted(
        (k for k in params if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1])
    )
    return [tuple(params[k]["kernel"].shape) for k in layers]


def test_readout_mlp_default_pyramid():
    mlp = ReadoutMLP()
    x = jnp.ones((7, 48))
    params = mlp.init(jax.random.PRNGKey(0), x)["params"]
    assert _dense_kernel_shapes(params) == [(48, 64), (64, 32), (32, 16), (16, 16), (16, 1)]
    assert mlp.apply({"params": params}, x).shape == (7,)
    assert tuple(JAT(num_species=4, cutoff=CUTOFF).readout) == (64, 32, 16, 16)
