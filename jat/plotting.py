"""Plots of the benchmarks and examples: matplotlib when it is installed, a note when not."""

from __future__ import annotations

import os
import sys
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend, or None (with a note on stderr) when matplotlib is
    not installed (``pip install matplotlib``, or the ``bench`` extra)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 130) -> str:
    """Lay out, write and close ``fig``; returns the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return str(path)


__all__ = ["pyplot", "save_figure"]
