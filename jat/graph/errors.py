"""Bit-coded error flags of the jittable graph code, and the errors raised from them on the host.

Code under ``jit`` cannot raise, so every neighbour-list build, skin-list update and edge
compaction returns an ``int32`` code whose bits say what went wrong (as jax-md's
``PartitionError``). The host reads the code after the call: a *growable* bit means a static bound
was too small (re-allocate and repeat, see :func:`jat.graph.fit`); an *input* bit means the
structure itself is invalid (raise, naming the atoms).
"""

from __future__ import annotations

import enum

import jax.numpy as jnp
import numpy as np

#: Atoms closer than this (Å) are "at the same position": an input error, not a geometry.
MIN_DISTANCE = 1e-3


class GraphError(enum.IntFlag):
    """Bits of a graph error code."""

    EDGES = 1  # more edges than the list's capacity
    BIN_OCCUPANCY = 2  # a cell-list bin held more atoms than its slots
    IMAGES = 4  # a periodic axis needs more bins or images than the list scans
    MODEL_SLOTS = 8  # more edges within the cutoff than a skin list's model slots
    COINCIDENT = 16  # two atoms (or an atom and an image) closer than MIN_DISTANCE
    INVALID = 32  # non-finite positions or a degenerate cell met inside jit


GROWABLE = GraphError.EDGES | GraphError.BIN_OCCUPANCY | GraphError.IMAGES | GraphError.MODEL_SLOTS
INPUT = GraphError.COINCIDENT | GraphError.INVALID

_WORDS = {
    GraphError.EDGES: "more edges than the list's capacity",
    GraphError.BIN_OCCUPANCY: "a cell-list bin overflowed",
    GraphError.IMAGES: "the cell needs more periodic images than were scanned",
    GraphError.MODEL_SLOTS: "more edges within the cutoff than the model's slots",
    GraphError.COINCIDENT: f"atoms closer than {MIN_DISTANCE} Å (at the same position)",
    GraphError.INVALID: "non-finite positions or a degenerate cell",
}


class CapacityError(RuntimeError):
    """A static bound could not be grown to fit (too many attempts, or above a memory bound)."""


def flag(condition, bit: GraphError) -> jnp.ndarray:
    """``bit`` as an int32 code where ``condition`` (a traced bool) holds, else 0."""
    return jnp.where(condition, jnp.int32(int(bit)), jnp.int32(0))


def combine(*codes) -> jnp.ndarray:
    """Bitwise OR of error codes (jittable)."""
    out = jnp.int32(0)
    for code in codes:
        out = out | jnp.asarray(code, jnp.int32)
    return out


def describe(code: int) -> str:
    """The set bits of ``code`` in words, e.g. "more edges than the list's capacity"."""
    bits = [text for bit, text in _WORDS.items() if int(code) & int(bit)]
    return "; ".join(bits) if bits else "no error"


def error_bits(code) -> int:
    """Host: the OR of an error code or of a batch of codes, as a Python int."""
    arr = np.asarray(code, np.int64).ravel()
    return int(np.bitwise_or.reduce(arr)) if arr.size else 0


def growable(code) -> bool:
    """Host: does ``code`` (an int or array, or a batch of them) ask for more room?"""
    return bool(error_bits(code) & int(GROWABLE))


def input_error(code) -> bool:
    """Host: does ``code`` say that the input structure is invalid?"""
    return bool(error_bits(code) & int(INPUT))


__all__ = [
    "GROWABLE",
    "INPUT",
    "MIN_DISTANCE",
    "CapacityError",
    "GraphError",
    "combine",
    "describe",
    "error_bits",
    "flag",
    "growable",
    "input_error",
]
