"""The training run: claim the run directory, set up, plan, train epoch by epoch, finish.

``train(config)`` starts a run in a new run directory (:mod:`jat.training.rundir`);
``train(config, resume=run_dir)`` (or ``resume(run_dir)``) continues an interrupted one from its
``last`` checkpoint, so that the epochs after it are computed exactly as if the run had not
stopped (shuffling is seeded per epoch, the learning rate is a function of the step, and
optimiser and EMA state are restored). A run stopped before its first checkpoint starts again
from the beginning in the same directory; a complete run is not trained on
(:class:`~jat.training.errors.RunCompleteError`). The pieces: :mod:`~jat.training.data` (files
and split), :mod:`~jat.training.trainer` (compiled steps, one epoch, evaluation),
:mod:`~jat.training.planning` (time budget, stop reasons), :mod:`~jat.training.state` (the typed
progress), :mod:`~jat.training.interrupts` (Ctrl-C), :mod:`~jat.training.parallel` (batches split
over devices) and :mod:`~jat.training.distributed` (several processes: process 0 writes the run
directory, its progress decides plans and stops for all).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jat.atomic_io import fault_point, recover
from jat.config import Config, config_to_dict, dump_config, load_config
from jat.dtypes import cast, precision
from jat.potential import Potential
from jat.training import distributed, optim, planning
from jat.training.data import check_split, expand_path, load_splits, read_files, split_record
from jat.training.errors import RunCompleteError, RunError, RunWriteError, TrainingInterrupted
from jat.training.interrupts import StopRequest, stop_on_signals
from jat.training.kfold import cross_validate, folds_started
from jat.training.progress import Progress, WandbLogger, describe
from jat.training.rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    RunDirectory,
    read_rows,
)
from jat.training.state import RunProgress
from jat.training.steps import TrainState
from jat.training.trainer import Trainer

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "SPLIT_FILE",
    "SUMMARY_FILE",
    "TrainResult",
    "check_split",
    "expand_path",
    "load_splits",
    "read_files",
    "resume",
    "train",
]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run produced: its directory, the best potential and the final metrics."""

    run_dir: Path
    potential: Potential
    summary: dict[str, Any]


def train(
    config: Config | None = None,
    *,
    resume: str | os.PathLike | None = None,
    progress: Progress | None = None,
    hooks: dict[str, Callable] | None = None,
) -> TrainResult:
    """Train a potential as ``config`` says, or continue the run in ``resume``.

    The run directory is claimed (or, to resume, locked) before any other work; SIGINT and
    SIGTERM stop the run cleanly at the next step (:class:`TrainingInterrupted`, checkpoints
    kept). ``hooks`` (for tests and tools): ``after_step(epoch, step_in_epoch, state)``, and
    ``after_evaluation(epoch, row)`` after each epoch with a validation (``row``: a copy of its
    metrics row, ``val_*`` figures and ``elapsed`` included). When ``after_evaluation`` returns a
    true value the run stops after that epoch as a complete run (stop reason ``"hook"``): its
    checkpoints, ``summary.json`` and best model are written as for any other stop.
    """
    with stop_on_signals() as stop:
        run, cfg = _open_run(config, resume)
        with run:
            out = progress or Progress(cfg.logging.progress if run.writes else "none")
            try:
                with precision(cfg.model.dtype):
                    if cfg.data.split.kfold is not None and cfg.data.split.fold is None:
                        if distributed.several():
                            raise ValueError(
                                "data.split.kfold runs its folds in one process so far; run "
                                "each fold on its own (data.split.fold=i) to use several"
                            )

                        def one(fcfg, frun, again):
                            r = _train(fcfg, frun, again, out, hooks or {}, stop)
                            return r.potential, r.summary

                        committee, summary = cross_validate(cfg, run, resume is not None, out,
                                                            one)
                        return TrainResult(run.path, committee, summary)
                    return _train(cfg, run, resume is not None, out, hooks or {}, stop)
            except (TrainingInterrupted, RunWriteError):
                raise  # their messages say how to resume
            except KeyboardInterrupt:  # a second Ctrl-C
                raise TrainingInterrupted(f"interrupted; {run.resume_hint()}", run.path) from None
            except Exception:
                if resume is None and not folds_started(run):
                    run.abandon_if_untrained()  # e.g. a data error: the same command may rerun
                raise


def _claim_or_open(
    config: Config | None, resume: str | os.PathLike | None
) -> tuple[RunDirectory, Config]:
    if resume is not None:
        run = RunDirectory.open(resume)
        try:
            return run, load_config(run.config_path)
        except BaseException:
            run.release()
            raise
    cfg = config if config is not None else load_config(None)
    return RunDirectory.claim(cfg.run_dir, cfg.output_dir, cfg.name, dump_config(cfg)), cfg


def _open_run(
    config: Config | None, resume: str | os.PathLike | None
) -> tuple[RunDirectory, Config]:
    """The run directory and configuration. With several processes, process 0 claims (or opens)
    the directory and tells the others where it is, or why it failed; they follow it read-only
    with the configuration process 0 wrote there."""
    if not distributed.several():
        return _claim_or_open(config, resume)
    if not distributed.is_leader():
        run = RunDirectory.follow(distributed.share_outcome(None, ""))
        return run, load_config(run.config_path)
    try:
        run, cfg = _claim_or_open(config, resume)
    except BaseException as err:
        distributed.share_outcome(err, "")
        raise
    distributed.share_outcome(None, str(run.path))
    return run, cfg


def _agree(prog: RunProgress) -> RunProgress:
    """Process 0's ``prog`` in every process (plans and stop decisions use its clock)."""
    if not distributed.several():
        return prog
    text = distributed.broadcast_text(json.dumps(prog.to_json()))
    return RunProgress.from_json(json.loads(text))


def resume(run_dir: str | os.PathLike, **kwargs: Any) -> TrainResult:
    """Continue the interrupted run in ``run_dir`` from its last checkpoint."""
    return train(resume=run_dir, **kwargs)


def _schedule(cfg: Config, epochs: int, steps_per_epoch: int) -> optim.Schedule:
    return optim.Schedule(
        kind=cfg.optimizer.schedule,
        lr_min=cfg.optimizer.lr_min,
        lr_max=cfg.optimizer.lr_max,
        lr_final=cfg.optimizer.lr_final,
        total_steps=epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        per_epoch=cfg.optimizer.per_epoch,
    )


def _with_stop_reason(cfg: Config, prog: RunProgress, rows: list[dict[str, Any]]) -> RunProgress:
    """``prog`` with the stop reason its last epoch gives (for checkpoints written before stop
    reasons were recorded, and to be sure); unchanged before the first epoch."""
    if prog.epoch == 0:
        return prog
    rows = [r for r in rows if r.get("epoch") == prog.epoch]
    epoch_time = rows[-1]["epoch_time"] if rows else 0.0
    return planning.with_stop_reason(
        prog, cfg.training.patience, cfg.training.time_budget, epoch_time
    )


def _start(
    trainer: Trainer, run: RunDirectory, resuming: bool, state: TrainState
) -> tuple[TrainState, RunProgress, list[dict[str, Any]]]:
    """The state, progress and metric rows the epochs continue from."""
    out = trainer.out
    if resuming and run.has(SPLIT_FILE):
        check_split(run.path, trainer.sets)
    else:
        run.write_text(SPLIT_FILE, split_record(trainer.sets))
    if resuming and run.has_checkpoint("last"):
        state, prog = run.load_checkpoint("last", trainer.host(state))
        state = trainer.place(state)
        rows = run.reset_rows(prog.epoch)
        out.message(f"resuming {run.path} after epoch {prog.epoch} (step {prog.step})")
        return state, prog, rows
    if resuming:
        out.message(
            f"{run.path} has no checkpoint yet (the run stopped before its first one): "
            "starting it again from the beginning"
        )
    return state, RunProgress(), run.reset_rows(0)


def _plan(trainer: Trainer, state: TrainState, prog: RunProgress) -> tuple[RunProgress, float]:
    """``prog`` with its planned epochs, and the ``time.monotonic()`` from which this process's
    time is charged to the run (see :mod:`~jat.training.planning`)."""
    cfg, budget = trainer.cfg, trainer.cfg.training.time_budget
    if prog.planned_epochs is None:
        epochs = cfg.training.epochs
        if budget is not None:
            per_epoch = trainer.measure_epoch(state)
            remaining = budget - prog.elapsed - (time.monotonic() - trainer.t0)
            epochs = planning.epochs_for_budget(per_epoch, remaining, cfg.training.epochs)
            trainer.out.message(
                f"time budget {budget:.0f} s: an epoch takes about {per_epoch:.2f} s, "
                f"planning {epochs} epochs"
            )
        return dataclasses.replace(prog, planned_epochs=epochs), trainer.t0
    if budget is None:
        return prog, trainer.t0
    # resuming on a plan: compile first, so that only the training is charged to the budget
    per_epoch = trainer.measure_epoch(state)
    trainer.out.message(planning.resume_outlook(prog, budget, per_epoch))
    return prog, time.monotonic()


def _train(
    cfg: Config,
    run: RunDirectory,
    resuming: bool,
    out: Progress,
    hooks: dict,
    stop: StopRequest,
) -> TrainResult:
    patience, budget = cfg.training.patience, cfg.training.time_budget
    if resuming and run.has_checkpoint("last") and run.has(SUMMARY_FILE):
        done = _with_stop_reason(cfg, run.read_progress("last"), read_rows(run.metrics_path))
        if done.stop_reason is not None:
            raise RunCompleteError(
                f"{run.path} is complete: it stopped after epoch {done.epoch} "
                f"({planning.describe_stop(done, patience)}); nothing to resume. Its best model "
                f"is in {run.path / 'best'} (jat.Potential.load({str(run.path)!r}))"
            )
    trainer = Trainer(cfg, run, out, hooks, stop)
    trainer.setup()
    state, prog, rows = _start(trainer, run, resuming, trainer.initial_state())
    prog = _with_stop_reason(cfg, prog, rows)
    if prog.stop_reason is not None:
        out.message(f"{run.path} had finished training when it stopped: finishing it")
        return _finish(trainer, run, prog, None)

    prog, clock = _plan(trainer, state, prog)
    prog = _agree(prog)
    epochs = prog.planned_epochs
    schedule = _schedule(cfg, epochs, trainer.steps_per_epoch)
    logger = None
    if cfg.logging.wandb and run.writes:
        logger = WandbLogger(
            cfg.logging.wandb_project,
            cfg.logging.wandb_mode,
            run.path.name,
            config_to_dict(cfg),
            str(run.path),
        )
        for row in rows:
            logger.log(row)
    key = trainer.monitor_key()
    elapsed0 = prog.elapsed

    def elapsed() -> float:
        return elapsed0 + time.monotonic() - clock

    while prog.stop_reason is None:
        trainer.check_stop(f"after epoch {prog.epoch}")
        epoch = prog.epoch + 1
        t_epoch = time.monotonic()
        state, row = trainer.run_epoch(state, epoch, epochs, prog.step, schedule)
        improved = False
        evaluated = epoch % cfg.training.eval_every == 0 or epoch == epochs
        if evaluated:
            val = trainer.evaluate(state.ema, "validation")
            row.update({f"val_{k}": v for k, v in val.items()})
            score = val.get(key, row["train_loss"] if key == "loss" else None)
            if score is None:
                score = val.get("loss", row["train_loss"])
            if prog.best_score is None or score < prog.best_score:
                prog = dataclasses.replace(prog, best_score=score, best_epoch=epoch, bad_epochs=0)
                improved = True
            else:
                prog = dataclasses.replace(prog, bad_epochs=prog.bad_epochs + 1)
        row["epoch_time"] = time.monotonic() - t_epoch
        row["elapsed"] = elapsed()
        row["best"] = improved
        prog = dataclasses.replace(prog, epoch=epoch, step=row["step"], elapsed=row["elapsed"])
        ema_pot = trainer.potential.with_params(trainer.host(state.ema))
        if improved:
            run.save_checkpoint("best", ema_pot, None, prog)
        run.append_row(row)
        rows.append(row)
        hook = hooks.get("after_evaluation")
        if evaluated and hook is not None and hook(epoch, dict(row)):
            prog = dataclasses.replace(prog, stop_reason="hook")
        if budget is not None and epoch == planning.REPLAN_EPOCH and not prog.replanned:
            epochs, note = planning.replan(rows, epochs, budget - elapsed(), cfg.training.epochs)
            if note:
                out.message(note)
            prog = dataclasses.replace(prog, planned_epochs=epochs, replanned=True)
            schedule = dataclasses.replace(schedule, total_steps=epochs * trainer.steps_per_epoch)
        elif budget is not None and prog.replanned:
            shorter, note = planning.keep_on_time(rows, epochs, budget - elapsed())
            if note:
                out.message(note)
                prog = dataclasses.replace(prog, planned_epochs=shorter)
        prog = _agree(planning.with_stop_reason(prog, patience, budget, row["epoch_time"]))
        if prog.planned_epochs != epochs:
            epochs = prog.planned_epochs
            schedule = dataclasses.replace(schedule, total_steps=epochs * trainer.steps_per_epoch)
        if distributed.several() and distributed.any_process(stop.requested):
            if not stop.requested:  # every process stops after the same epoch
                stop.request("a signal to another process")
        interrupted = stop.requested
        if epoch % cfg.training.checkpoint_every == 0 or prog.stop_reason or interrupted:
            run.save_checkpoint("last", ema_pot, trainer.host(state), prog)
        fault_point("train:epoch")
        out.epoch(row, epochs)
        if logger:
            logger.log(row)
    return _finish(trainer, run, prog, logger)


def _finish(
    trainer: Trainer, run: RunDirectory, prog: RunProgress, logger: WandbLogger | None
) -> TrainResult:
    """Evaluate the best model on every set, write ``summary.json`` and report."""
    cfg, out = trainer.cfg, trainer.out
    trainer.check_stop(f"after epoch {prog.epoch}, before the final evaluation")
    if distributed.several():
        distributed.barrier("jat:finish")  # process 0 has written the last checkpoints
    if run.writes:
        recover(run.path)
    name = "best" if prog.best_epoch is not None else "last"  # no evaluation ever ran: last
    if not run.has_checkpoint(name):
        raise RunError(
            f"{run.path / name} is missing though the run recorded it; the run directory was "
            "changed by hand and cannot be finished"
        )
    best_prog = run.read_progress(name)
    best = Potential.load(run.path / name)
    if cfg.loss.energy_weight == 0 and any(s.energy is not None for s in trainer.sets["train"]):
        best = trainer.refit_energy_shift(best)
        best_prog = dataclasses.replace(best_prog, energy_shift_refit=True)
        run.save_checkpoint("best", best, None, best_prog)
    params = cast(best.params, trainer.cfg.model.dtype)
    summary: dict[str, Any] = {
        "stopped_by": planning.describe_stop(prog, cfg.training.patience),
        "stop_reason": prog.stop_reason,
        "epochs": prog.epoch,
        "planned_epochs": prog.planned_epochs,
        "steps": prog.step,
        "best_epoch": best_prog.epoch if name == "best" else None,
        "elapsed_s": prog.elapsed,
        "compilations": dict(trainer.compilations),
        "n_structures": {k: len(v) for k, v in trainer.sets.items()},
    }
    for set_name in ("train", "validation", "test", "excluded"):
        if set_name in trainer.data:
            summary[set_name] = trainer.evaluate(params, set_name)
    run.write_json(SUMMARY_FILE, summary)
    out.message(
        f"stopped after {prog.epoch} epochs ({summary['stopped_by']}), {prog.elapsed:.0f} s; "
        f"compiled the training step {trainer.compilations['train']}× and the evaluation step "
        f"{trainer.compilations['eval']}×"
    )
    for set_name in ("validation", "test", "excluded"):
        if set_name in summary:
            figures = describe(summary[set_name])
            out.message(f"{set_name} (best model, epoch {summary['best_epoch']}): {figures}")
    out.message(
        f"best model saved in {run.path / 'best'}; load it with "
        f"jat.Potential.load({str(run.path)!r})"
    )
    if logger:
        final = {
            f"{k}_{m}": v for k in ("validation", "test") for m, v in summary.get(k, {}).items()
        }
        logger.finish(final)
    return TrainResult(run_dir=run.path, potential=best, summary=summary)
