"""``jat.md``: the JAX-MD integration, :mod:`jat.simulation.jax_md` under its short name."""

from jat.simulation.jax_md import *  # noqa: F403
from jat.simulation.jax_md import __all__  # noqa: F401
