"""The progress of a training run (``progress.json`` of its checkpoints) as a typed value."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

#: "hook": an ``after_evaluation`` hook of :func:`jat.training.train` asked the run to stop
StopReason = Literal["epochs", "patience", "time_budget", "hook"]
STOP_REASONS: tuple[str, ...] = ("epochs", "patience", "time_budget", "hook")


@dataclasses.dataclass(frozen=True)
class RunProgress:
    """Where a run stands after its last completed epoch (change it with ``dataclasses.replace``).

    ``planned_epochs`` is the length of the learning-rate schedule (``training.epochs``, or what
    fits in the time budget; None until planned), ``replanned`` whether the one correction from
    measured epoch times was made, ``bad_epochs`` the evaluations since the best one,
    ``stop_reason`` why the run ended (None while it is not complete), ``energy_shift_refit``
    whether μ_Z was refitted to the trained network (set in ``best`` at the end).
    """

    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    planned_epochs: int | None = None
    replanned: bool = False
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stop_reason: StopReason | None = None
    energy_shift_refit: bool = False

    def __post_init__(self) -> None:
        if self.epoch < 0 or self.step < 0 or self.bad_epochs < 0:
            raise ValueError(f"negative epoch, step or bad_epochs in {self}")
        if self.stop_reason is not None and self.stop_reason not in STOP_REASONS:
            raise ValueError(f"stop_reason {self.stop_reason!r} is not one of {STOP_REASONS}")
        if self.best_score is not None and not math.isfinite(self.best_score):
            raise ValueError(f"best_score {self.best_score} is not finite")

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the ``progress.json`` layout)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunProgress:
        """Read a ``progress.json`` dict, also one written before a field existed (it takes the
        default) or with fields this version does not know (ignored)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        kinds = {
            "epoch": int,
            "step": int,
            "elapsed": float,
            "planned_epochs": int,
            "replanned": bool,
            "best_score": float,
            "best_epoch": int,
            "bad_epochs": int,
            "stop_reason": str,
            "energy_shift_refit": bool,
        }
        values: dict[str, Any] = {}
        for name, kind in kinds.items():
            if name not in data or data[name] is None:
                continue
            value = data[name]
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if not ok or (kind is int and isinstance(value, bool)):
                raise ValueError(f"entry {name!r}: expected {kind.__name__}, got {value!r}")
            values[name] = kind(value)
        return cls(**values)
