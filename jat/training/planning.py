"""How long a run trains: epochs fitted to a time budget, the re-plans, and when it stops.

With ``training.time_budget`` the number of epochs (the length of the one-cycle schedule) is
planned once from timed compiled steps, so that the schedule ends within ``BUDGET_MARGIN`` of the
budget, and corrected once after epoch ``REPLAN_EPOCH`` from measured epoch times. Later, when
the epochs slow down (a loaded machine, longer evaluations) so that the planned ones would run
past the budget, the plan is shortened (:func:`keep_on_time`; never lengthened), so that the
schedule still reaches lr_final instead of being cut off by the budget. The plan is stored in
the checkpoints and a resumed run keeps it (see :func:`resume_outlook`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jat.training.state import RunProgress, StopReason

BUDGET_MARGIN = 0.97  # fraction of the remaining budget the planned epochs may fill
REPLAN_EPOCH = 3  # with a time budget, the plan is corrected once from the epochs 2..3 timings
REPLAN_TOLERANCE = 0.1  # a measured plan within 10 % of the current one keeps the current one
RECENT_EPOCHS = 10  # the epochs whose mean time predicts the rest of the run (keep_on_time)


def epochs_for_budget(per_epoch: float, remaining: float, max_epochs: int) -> int:
    """Epochs of ``per_epoch`` seconds that fit in ``remaining`` seconds (at least 1, at most
    ``max_epochs``)."""
    fit = int(remaining * BUDGET_MARGIN / max(per_epoch, 1e-9))
    return min(max(fit, 1), max_epochs)


def replan(
    rows: Sequence[dict[str, Any]], planned: int, remaining: float, max_epochs: int
) -> tuple[int, str | None]:
    """The corrected number of epochs from the epoch times in ``rows`` (the first, which
    includes compilation, is left out) and a message when it changes the plan."""
    done = rows[-1]["epoch"]
    measured = float(np.mean([r["epoch_time"] for r in rows[1:]]))
    fit = min(done + epochs_for_budget(measured, remaining, max_epochs), max_epochs)
    if abs(fit - planned) <= REPLAN_TOLERANCE * planned:
        return planned, None
    return fit, f"epochs take {measured:.2f} s: re-planning {fit} epochs instead of {planned}"


def keep_on_time(
    rows: Sequence[dict[str, Any]], planned: int, remaining: float
) -> tuple[int, str | None]:
    """The planned epochs, shortened when the remaining ones would overrun the ``remaining``
    seconds of the budget at the mean time of the last ``RECENT_EPOCHS`` epochs in ``rows``
    (the first epoch, with its compilation, left out), and a message when it shortens them.
    The shortened plan fills ``BUDGET_MARGIN`` of the remaining time, as the first plan does,
    so that the budget's own stop (which would cut the schedule short) does not come first."""
    done = rows[-1]["epoch"]
    recent = [r["epoch_time"] for r in rows[1:][-RECENT_EPOCHS:]]
    if not recent or planned <= done:
        return planned, None
    per_epoch = max(float(np.mean(recent)), 1e-9)
    if (planned - done) * per_epoch <= remaining:
        return planned, None
    fit = done + epochs_for_budget(per_epoch, remaining, planned - done)
    if fit >= planned:
        return planned, None
    return fit, (
        f"epochs now take {per_epoch:.2f} s, so the {planned - done} planned epochs left would "
        f"overrun the time budget ({remaining:.0f} s left): shortening the plan to {fit} "
        "epochs, so that the learning-rate schedule still ends"
    )


def stop_reason(
    progress: RunProgress, patience: int | None, budget: float | None, epoch_time: float
) -> StopReason | None:
    """Why the run stops after ``progress.epoch`` (None: it goes on). ``epoch_time`` is the
    duration of that epoch: with a budget, the next one must be expected to end within it."""
    if patience is not None and progress.bad_epochs >= patience:
        return "patience"
    if progress.planned_epochs is not None and progress.epoch >= progress.planned_epochs:
        return "epochs"
    if budget is not None and progress.elapsed + epoch_time > budget:
        return "time_budget"
    return None


def with_stop_reason(
    progress: RunProgress, patience: int | None, budget: float | None, epoch_time: float
) -> RunProgress:
    """``progress`` with its stop reason set (kept if already set)."""
    if progress.stop_reason is not None:
        return progress
    reason = stop_reason(progress, patience, budget, epoch_time)
    return dataclasses.replace(progress, stop_reason=reason)


def describe_stop(progress: RunProgress, patience: int | None) -> str:
    """The stop reason of a complete run in words."""
    if progress.stop_reason == "patience":
        return f"no improvement in {patience} evaluations"
    if progress.stop_reason == "hook":
        return "stopped by a hook (e.g. a pruned hyperparameter-search trial)"
    if progress.stop_reason == "time_budget":
        planned = progress.planned_epochs or progress.epoch
        if progress.epoch < planned:
            return (
                f"time budget; {planned - progress.epoch} of the {planned} planned epochs not "
                "run, so the learning-rate schedule did not reach its end"
            )
        return "time budget"
    return "epochs"


def resume_outlook(progress: RunProgress, budget: float, per_epoch: float) -> str:
    """What a resumed time-budgeted run will do: the budget left (``budget`` minus the elapsed
    time of the checkpoint; the time lost after it and the resumed process's set-up and
    compilation are not charged), and whether the remaining planned epochs fit in it at
    ``per_epoch`` seconds each. They run to the end of the schedule if they do; if they do not,
    the run says so here, and :func:`keep_on_time` shortens the plan once the resumed epochs
    show the slower pace (the budget stops the run in any case)."""
    planned = progress.planned_epochs or progress.epoch
    left = budget - progress.elapsed
    remaining = planned - progress.epoch
    need = remaining * per_epoch
    head = (
        f"time budget {budget:.0f} s: {left:.0f} s left for the {remaining} remaining of "
        f"{planned} planned epochs"
    )
    if need <= left:
        return f"{head} (about {need:.0f} s at {per_epoch:.2f} s per epoch)"
    fit = max(int(left / max(per_epoch, 1e-9)), 0)
    return (
        f"{head}, which need about {need:.0f} s at {per_epoch:.2f} s per epoch now: unless "
        "the plan is shortened as the epochs show it, "
        f"the run will stop at the budget after about {fit} more epochs, before its "
        "learning-rate schedule ends"
    )
