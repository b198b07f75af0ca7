"""Property targets: the networks' property channels, the properties formed from them (QM9
properties, dipoles), their labels, losses and metrics in training, and the potential's
results and files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jat.models import MODELS, HyperparameterError


def _toy_graph():
    """Three real atoms and one padded slot, with a symmetric edge list (receivers sorted)."""
    species = jnp.array([0, 1, 1, -1])
    pairs = [(1, 0), (2, 0), (0, 1), (0, 2)]
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.1, 0.0], [0.0, 0.0, 0.0]])
    senders = jnp.array([s for s, _ in pairs] + [3, 3])
    receivers = jnp.array([r for _, r in pairs] + [3, 3])
    vectors = jnp.asarray(pos[np.asarray(senders)] - pos[np.asarray(receivers)])
    mask = jnp.array([True] * 4 + [False] * 2)
    return species, vectors, senders, receivers, mask


@pytest.mark.parametrize("name", sorted(MODELS))
def test_property_outputs_of_every_network(name):
    args = _toy_graph()
    plain = MODELS[name](num_species=2, cutoff=3.0)
    net = MODELS[name](num_species=2, cutoff=3.0, property_outputs=3)
    p0 = plain.init(jax.random.PRNGKey(0), *args)
    p = net.init(jax.random.PRNGKey(0), *args)
    # a separate head: the energy network's parameters are those of the plain model
    assert set(p["params"]) == set(p0["params"]) | {"properties"}
    same = jax.tree.map(lambda a, b: a.shape == b.shape, p0["params"],
                        {k: v for k, v in p["params"].items() if k != "properties"})
    assert all(jax.tree.leaves(same))
    out = net.apply(p, *args)
    assert out["properties"].shape == (4, 3)
    assert np.all(np.asarray(out["properties"][3]) == 0.0)  # padded atom
    assert np.allclose(out["energy"], plain.apply(p0, *args))
    assert np.ndim(plain.apply(p0, *args)) == 1  # P = 0: the energies alone, as before


def test_property_outputs_range_checked():
    with pytest.raises(HyperparameterError, match="property_outputs"):
        MODELS["schnet"](num_species=1, cutoff=3.0, property_outputs=-1)
