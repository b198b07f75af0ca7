"""Range checks of model hyperparameters, run when a model is constructed.

Every model class calls these from ``__post_init__``, so a bad value is refused where it is given
(``Potential.create``, ``Potential.load``, a training configuration) with the name of the
hyperparameter, before any parameter is initialised: ``heads=0`` never reaches a division, and a
huge ``layers`` never starts a trace. The upper bounds are far above any sensible model; they
exist so that a malformed saved file cannot make a load hang.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MAX_LAYERS = 64
MAX_WIDTH = 8192
MAX_BASIS = 1024
MAX_SPECIES = 118


class HyperparameterError(ValueError):
    """A model hyperparameter out of range; ``key`` names it, ``str(err)`` is ``"key: problem"``."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


def _show(value: Any) -> str:
    return repr(value)


def integer(key: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (bools and non-integral numbers are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and not value.is_integer()
    ):
        raise HyperparameterError(key, f"must be an integer, got {_show(value)}")
    if not low <= value <= high:
        raise HyperparameterError(key, f"must be between {low} and {high}, got {_show(value)}")
    return int(value)


def positive_number(key: str, value: Any, high: float = math.inf) -> float:
    """``value`` as a finite float in (0, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HyperparameterError(key, f"must be a number, got {_show(value)}")
    if not (math.isfinite(value) and 0 < value <= high):
        bound = "" if math.isinf(high) else f" and at most {high:g}"
        raise HyperparameterError(key, f"must be positive and finite{bound}, got {_show(value)}")
    return float(value)


def boolean(key: str, value: Any) -> bool:
    """``value`` as a bool (only True or False; 0, 1 and strings are refused)."""
    if not isinstance(value, bool):
        raise HyperparameterError(key, f"must be true or false, got {_show(value)}")
    return value


def choice(key: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in tuple(choices):
        options = ", ".join(repr(c) for c in choices)
        raise HyperparameterError(key, f"unknown {key} {_show(value)}; choose from {options}")
    return value


def widths(key: str, value: Any, *, allow_empty: bool) -> tuple[int, ...]:
    """A list of layer widths, each an integer in [1, MAX_WIDTH]."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise HyperparameterError(key, f"must be a list of widths, got {_show(value)}")
    if not value and not allow_empty:
        raise HyperparameterError(key, "must not be empty")
    return tuple(integer(f"{key}[{k}]", w, 1, MAX_WIDTH) for k, w in enumerate(value))


MAX_HEADS = 1024  # readout heads of a shallow ensemble


def readout_heads(value: Any) -> int:
    """The number of outputs of a model's last readout layer: 1, or K heads of a shallow
    ensemble (per-atom outputs (N, K) instead of (N,))."""
    return integer("readout_heads", value, 1, MAX_HEADS)


def heads_output(y: Any, heads: int, node_mask: Any) -> Any:
    """The last readout layer's output (N, K) as the model returns it: (N,) for one head, else
    (N, K); 0 on padded atoms."""
    import jax.numpy as jnp

    if heads == 1:
        return jnp.where(node_mask, y[:, 0], 0.0)
    return jnp.where(node_mask[:, None], y, 0.0)


MAX_PROPERTIES = 256  # extra per-atom scalar outputs (property targets)


def property_outputs(value: Any) -> int:
    """P, the number of extra per-atom scalar outputs of a model's property head (0: none)."""
    return integer("property_outputs", value, 0, MAX_PROPERTIES)


def with_properties(energy: Any, properties: Any, node_mask: Any) -> Any:
    """A network's return value: the per-atom energies alone when there is no property head
    (``properties`` None), else ``{"energy": energy, "properties": (N, P)}`` with the property
    outputs 0 on padded atoms."""
    import jax.numpy as jnp

    if properties is None:
        return energy
    return {"energy": energy, "properties": jnp.where(node_mask[:, None], properties, 0.0)}


def common(num_species: Any, cutoff: Any) -> None:
    """The two arguments every model takes from the potential."""
    integer("num_species", num_species, 1, MAX_SPECIES)
    positive_number("cutoff", cutoff, high=1e3)


__all__ = [
    "MAX_BASIS",
    "MAX_HEADS",
    "MAX_LAYERS",
    "MAX_PROPERTIES",
    "MAX_SPECIES",
    "MAX_WIDTH",
    "HyperparameterError",
    "boolean",
    "choice",
    "common",
    "integer",
    "heads_output",
    "positive_number",
    "property_outputs",
    "readout_heads",
    "widths",
    "with_properties",
]
