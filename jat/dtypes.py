"""Floating-point precision of a potential: the dtypes jat evaluates in, x64 only where needed,
and the one cast of a parameter tree to a dtype."""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ("float32", "float64")


def check_dtype(dtype: Any) -> str:
    """``dtype`` (a name, numpy or JAX dtype or scalar type) as "float32" or "float64"."""
    if not isinstance(dtype, str):
        try:
            dtype = np.dtype(dtype).name
        except TypeError:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}") from None
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def precision(dtype: str):
    """A context enabling float64 (``jax.enable_x64``) for a float64 potential's calls only;
    float32 runs as it is."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def cast(tree: Any, dtype: str) -> Any:
    """Every leaf of ``tree`` as a JAX array of ``dtype`` (call inside :func:`precision`)."""
    dt = jnp.dtype(dtype)
    return jax.tree.map(lambda x: jnp.asarray(x, dt), tree)


__all__ = ["DTYPES", "cast", "check_dtype", "precision"]
