"""Where the reference data lives: ``$JAT_DATA_DIR``, else ``../shared/data`` by the checkout."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "JAT_DATA_DIR"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """Resolve the data directory.

    Order: the explicit ``path``; the ``JAT_DATA_DIR`` environment variable; ``../shared/data``
    relative to the repository checkout that holds this package; ``../shared/data`` relative to
    the working directory. The returned path may not exist; callers report that clearly.
    """
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    beside_checkout = Path(__file__).resolve().parents[3] / "shared" / "data"
    if beside_checkout.is_dir():
        return beside_checkout
    return Path.cwd().parent / "shared" / "data"
