"""Checkpoints of a training run, written atomically.

A checkpoint directory is a loadable ``jat.Potential`` (``metadata.json`` + ``params.msgpack``,
holding the parameters used for evaluation) plus ``train_state.msgpack`` (parameters, optimiser
state, EMA and step: everything needed to resume exactly) and ``progress.json`` (epoch, best
score, planned epochs, elapsed time, …). The whole directory is swapped in at once, so a crash
while writing keeps the previous complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
from flax import serialization

from jat.atomic_io import atomic_directory, recover

STATE_FILE = "train_state.msgpack"
PROGRESS_FILE = "progress.json"


def save_checkpoint(
    directory: str | os.PathLike, potential: Any, state: Any | None, progress: dict
) -> None:
    """Write ``potential`` (and, when given, the training ``state``) with ``progress``."""
    with atomic_directory(directory) as tmp:
        potential.write_files(tmp)
        if state is not None:
            raw = serialization.to_state_dict(_fields(jax.device_get(state)))
            (tmp / STATE_FILE).write_bytes(serialization.msgpack_serialize(raw))
        (tmp / PROGRESS_FILE).write_text(json.dumps(progress, indent=2) + "\n")


def load_checkpoint(directory: str | os.PathLike, template: Any) -> tuple[Any, dict]:
    """The training state (same structure as ``template``) and progress of a checkpoint."""
    directory = Path(directory)
    recover(directory)
    state_path = directory / STATE_FILE
    progress_path = directory / PROGRESS_FILE
    for path in (state_path, progress_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint file missing; cannot resume")
    try:
        raw = serialization.msgpack_restore(state_path.read_bytes())
        fields = serialization.from_state_dict(_fields(template), raw)
        state = dataclasses.replace(template, **fields)
    except Exception as err:  # msgpack and flax raise several types for bad data
        raise ValueError(f"{state_path}: cannot restore the training state ({err})") from None
    try:
        progress = json.loads(progress_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{progress_path}: not valid JSON ({err})") from None
    return state, progress


def _fields(state: Any) -> dict[str, Any]:
    """A dataclass state as a plain dict of its fields (flax serialises dicts and namedtuples)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
