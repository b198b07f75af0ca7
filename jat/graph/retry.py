"""The one re-allocation loop: run with static bounds, and while the error code asks for room,
grow the bounds and run again; bounded, with a clear error when the bounds cannot be made to fit.

Every caller that evaluates with static capacities (``jat.graph.neighbor_list``,
``Potential.compute``, the ASE calculator, the JAX-MD list allocation and chunk loop, the
training data) goes through :func:`fit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from jat.graph.errors import GROWABLE, CapacityError, describe, error_bits

MAX_ATTEMPTS = 8

Bounds = TypeVar("Bounds")
Result = TypeVar("Result")


def fit(
    run: Callable[[Bounds], Result],
    bounds: Bounds,
    regrow: Callable[[Bounds, Result, int], Bounds],
    *,
    error: Callable[[Result], Any],
    what: str,
    attempts: int = MAX_ATTEMPTS,
) -> tuple[Result, Bounds]:
    """``run(bounds)`` until its ``error(result)`` code has no growable bit.

    ``regrow(bounds, result, code)`` returns larger bounds for the bits set in ``code`` (it may
    re-measure the geometry, or raise :class:`CapacityError` when the room needed is beyond a
    memory bound). Returns the first result that fits and the bounds it ran with; input-error
    bits (coincident atoms, invalid cells) are left for the caller to report. Raises
    :class:`CapacityError` after ``attempts`` runs that did not fit.
    """
    code = 0
    for _ in range(attempts):
        result = run(bounds)
        code = error_bits(error(result))
        if not code & int(GROWABLE):
            return result, bounds
        bounds = regrow(bounds, result, code)
    raise CapacityError(
        f"{what}: still too small after {attempts} re-allocations ({describe(code)}); the "
        "structure is probably collapsing or exploding"
    )


__all__ = ["MAX_ATTEMPTS", "fit"]
