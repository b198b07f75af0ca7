"""jat: sparse-graph machine-learned interatomic potentials in JAX/Flax.

``import jat`` is cheap: JAX, Flax and ASE load when a name that needs them is first used. On
Linux it also makes malloc keep freed memory for reuse (:func:`jat.runtime.keep_freed_memory`:
XLA's per-call buffers then cost no page faults; ``JAT_KEEP_FREED_MEMORY=0`` turns it off).

    pot = jat.Potential.create("jat", species=["H", "C", "N", "O"], cutoff=5.0)
    atoms.calc = pot.calculator()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jat import runtime

__version__ = "0.1.0"

runtime.keep_freed_memory()

_LAZY = {
    "Potential": ("jat.potential", "Potential"),
    "Results": ("jat.potential", "Results"),
    "MemberResults": ("jat.potential", "MemberResults"),
    "Calibration": ("jat.uncertainty", "Calibration"),
    "Guard": ("jat.uncertainty", "Guard"),
    "UncertaintyError": ("jat.uncertainty", "UncertaintyError"),
    "JATCalculator": ("jat.simulation.ase_calculator", "JATCalculator"),
    "graph": ("jat.graph", None),
    "models": ("jat.models", None),
    "data": ("jat.data", None),
}

if TYPE_CHECKING:  # pragma: no cover
    from jat import data, graph, models
    from jat.potential import MemberResults, Potential, Results
    from jat.simulation.ase_calculator import JATCalculator
    from jat.uncertainty import Calibration, Guard, UncertaintyError


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'jat' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Calibration",
    "Guard",
    "JATCalculator",
    "MemberResults",
    "Potential",
    "Results",
    "UncertaintyError",
    "__version__",
    "data",
    "graph",
    "models",
    "runtime",
]
