"""Checkpoints of a training run, written atomically and durably.

A checkpoint directory is a loadable ``jat.Potential`` (``metadata.json`` + ``params.msgpack``,
holding the parameters used for evaluation) plus ``train_state.msgpack`` (parameters, optimiser
state, EMA and step: everything needed to resume exactly) and ``progress.json``
(:class:`~jat.training.state.RunProgress`). The whole directory is swapped in at once
(:func:`jat.atomic_io.atomic_directory`), so a crash while writing keeps the previous complete
checkpoint, and every read first runs :func:`jat.atomic_io.recover`. Parameters that are not
finite are never written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from jat.atomic_io import atomic_directory, recover
from jat.training.errors import NonFiniteError
from jat.training.state import RunProgress

STATE_FILE = "train_state.msgpack"
PROGRESS_FILE = "progress.json"


def save_checkpoint(
    directory: str | os.PathLike, potential: Any, state: Any | None, progress: RunProgress
) -> None:
    """Write ``potential`` (and, when given, the training ``state``) with ``progress``.

    Raises :class:`NonFiniteError` before writing anything if a parameter is NaN or infinite.
    """
    require_finite(potential.params, f"the parameters to be saved in {directory}")
    if state is not None:
        require_finite(state, f"the training state to be saved in {directory}")
    with atomic_directory(directory) as tmp:
        potential.write_files(tmp)
        if state is not None:
            raw = serialization.to_state_dict(_fields(jax.device_get(state)))
            (tmp / STATE_FILE).write_bytes(serialization.msgpack_serialize(raw))
        text = json.dumps(progress.to_json(), indent=2, allow_nan=False) + "\n"
        (tmp / PROGRESS_FILE).write_text(text)


def load_checkpoint(directory: str | os.PathLike, template: Any) -> tuple[Any, RunProgress]:
    """The training state (same structure as ``template``) and progress of a checkpoint."""
    directory = Path(directory)
    recover(directory)
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path}: checkpoint file missing; cannot resume")
    progress = read_progress(directory)
    try:
        raw = serialization.msgpack_restore(state_path.read_bytes())
        fields = serialization.from_state_dict(_fields(template), raw)
        state = dataclasses.replace(template, **fields)
    except Exception as err:  # msgpack and flax raise several types for bad data
        raise ValueError(f"{state_path}: cannot restore the training state ({err})") from None
    return state, progress


def read_progress(directory: str | os.PathLike) -> RunProgress:
    """The ``progress.json`` of a checkpoint (after :func:`jat.atomic_io.recover`)."""
    directory = Path(directory)
    recover(directory)
    path = directory / PROGRESS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file missing")
    try:
        return RunProgress.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid progress file ({err})") from None


def require_finite(tree: Any, what: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` if a leaf of ``tree`` has a NaN or inf."""
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        if not np.all(np.isfinite(leaf)):
            raise NonFiniteError(f"{what} are not finite (NaN or inf); refusing to save them")


def _fields(state: Any) -> dict[str, Any]:
    """A dataclass state as a plain dict of its fields (flax serialises dicts and namedtuples)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
