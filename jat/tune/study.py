"""Running a study: each trial one training run in ``STUDY_DIR/trials/NNNN``, pruned on its
validation curve, the study kept in ``STUDY_DIR/study.db`` (Optuna, SQLite) so that the same
command resumes it.

On resume, completed, pruned and failed trials are kept; a trial that was running when the
process stopped (Ctrl-C, a kill, a crash) is marked failed with the user attribute
``interrupted`` and its parameters are queued again, so it is retried as a new trial (in a new
run directory; the interrupted one is left as it was). One process runs a study at a time
(``STUDY_DIR/.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jat.config import ConfigError
from jat.tune.space import TuneSpec

STUDY_FILE = "study.db"
TRIALS_DIR = "trials"
LOCK_FILE = ".lock"


class StudyError(RuntimeError):
    """A study directory that cannot be used as it is."""


class StudyInUseError(StudyError):
    """Another process runs the study."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ImportError(
            "python -m jat.tune needs Optuna: pip install optuna (or the tune extra, "
            'pip install -e ".[tune]")'
        ) from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials report through ``say``
    return optuna


@contextlib.contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Hold ``STUDY_DIR/.lock`` (one process per study)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(study_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StudyInUseError(
                f"{study_dir} is in use by another python -m jat.tune process; wait for it or "
                "stop it"
            ) from None
        yield
    finally:
        os.close(fd)


def make_pruner(spec: TuneSpec) -> Any:
    """The Optuna pruner the settings name."""
    optuna = _optuna()
    s = spec.settings
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=s.startup_trials, n_warmup_steps=s.pruner_warmup
        )
    if s.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=s.pruner_warmup or "auto")
    return optuna.pruners.NopPruner()


def make_sampler(spec: TuneSpec, n_existing: int) -> Any:
    """The sampler, seeded with ``seed`` plus the trials the study has (so that a resumed study
    does not draw its first trials again)."""
    optuna = _optuna()
    seed = spec.settings.seed + n_existing
    if spec.settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(spec: TuneSpec, pruner: Any = None) -> tuple[Any, Any]:
    """The study in ``STUDY_DIR/study.db``, created or loaded, and its storage."""
    optuna = _optuna()
    url = f"sqlite:///{(spec.study_dir / STUDY_FILE).resolve()}"
    storage = optuna.storages.RDBStorage(url)
    names = {s.study_name for s in storage.get_all_studies()}
    n_existing = 0
    if spec.study_name in names:
        n_existing = len(storage.get_all_trials(storage.get_study_id_from_name(spec.study_name)))
    study = optuna.create_study(
        storage=storage,
        study_name=spec.study_name,
        direction=spec.settings.direction,
        sampler=make_sampler(spec, n_existing),
        pruner=pruner if pruner is not None else make_pruner(spec),
        load_if_exists=True,
    )
    wanted = optuna.study.StudyDirection.MINIMIZE
    if spec.settings.direction == "maximize":
        wanted = optuna.study.StudyDirection.MAXIMIZE
    if study.direction != wanted:
        raise ConfigError(
            f"the study in {spec.study_dir} was created to "
            f"{study.direction.name.lower()}; use another study_dir to {spec.settings.direction}",
            source=spec.source,
            key="direction",
        )
    return study, storage


def recover(study: Any, storage: Any) -> list[int]:
    """Mark trials left running by a stopped process as failed (``interrupted``) and queue the
    parameters of every interrupted trial not yet retried. Returns the retried trial numbers."""
    optuna = _optuna()
    state = optuna.trial.TrialState
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, state.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for trial in trials:
        if (
            trial.state == state.FAIL
            and trial.user_attrs.get("interrupted")
            and trial.number not in retried
            and trial.params
        ):
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            queued.append(trial.number)
    return queued


def finished(study: Any) -> int:
    """Trials that count towards ``trials``: complete, pruned, or failed other than by an
    interruption."""
    state = _optuna().trial.TrialState
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (state.COMPLETE, state.PRUNED):
            n += 1
        elif t.state == state.FAIL and not t.user_attrs.get("interrupted"):
            n += 1
    return n


def inference_time(potential: Any, atoms: Any, repeats: int) -> float:
    """Median wall time in seconds of one energy+forces call (``Potential.compute``, stress off)
    on ``atoms``, after a first call that compiles."""
    potential.compute(atoms, stress=False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        potential.compute(atoms, stress=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _probe_structure(cfg: Any) -> Any:
    """The first validation structure of the run's split (else the first training one)."""
    from jat.training.data import load_splits

    sets = load_splits(cfg)
    for name in ("validation", "train"):
        if sets.get(name):
            return sets[name][0]
    return None


class Objective:
    """The function Optuna calls per trial: sample, train, report, measure."""

    def __init__(self, spec: TuneSpec, say: Callable[[str], None]):
        self.spec, self.say = spec, say

    def __call__(self, trial: Any) -> float:
        import jax

        optuna = _optuna()
        from jat.training import train

        spec, key = self.spec, self.spec.objective
        number = trial.number
        values = {k: p.suggest(trial, k) for k, p in spec.search.items()}
        run_dir = spec.study_dir / TRIALS_DIR / f"{number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in values.items())
        retry = trial.user_attrs.get("retry_of")
        self.say(f"trial {number}: {shown}" + (f" (retry of trial {retry})" if retry is not None
                                               else ""))
        try:
            cfg = spec.config(values, run_dir=run_dir, name=f"trial-{number:04d}")
        except ConfigError as err:
            trial.set_user_attr("error", str(err))
            self.say(f"trial {number}: failed: {err}")
            raise
        pruned: dict[str, Any] = {}

        def after_evaluation(epoch: int, row: dict[str, Any]) -> bool:
            value = row.get(f"val_{key}")
            if value is None or not np.isfinite(value):
                return False
            trial.report(float(value), epoch)
            if trial.should_prune():
                pruned.update(epoch=epoch, value=float(value))
                return True
            return False

        t0 = time.monotonic()
        try:
            result = train(cfg, hooks={"after_evaluation": after_evaluation})
        except KeyboardInterrupt:  # TrainingInterrupted too: retried when the study resumes
            trial.set_user_attr("interrupted", True)
            self.say(f"trial {number}: interrupted; it is retried when the study resumes")
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            self.say(f"trial {number}: failed: {type(err).__name__}: {err}")
            raise
        wall = time.monotonic() - t0
        summary = result.summary
        n_params = int(sum(np.size(x) for x in jax.tree.leaves(result.potential.params)))
        trial.set_user_attr("train_time_s", float(summary["elapsed_s"]))
        trial.set_user_attr("wall_time_s", wall)
        trial.set_user_attr("epochs", int(summary["epochs"]))
        trial.set_user_attr("n_params", n_params)
        structure = _probe_structure(cfg)
        if structure is not None:
            seconds = inference_time(
                result.potential, structure.to_atoms(), spec.settings.inference_repeats
            )
            trial.set_user_attr("inference_ms", seconds * 1e3)
            trial.set_user_attr("inference_atoms", len(structure.symbols))
        final = summary.get("validation", {}).get(key)
        if final is not None:
            trial.set_user_attr("final_value", float(final))
        jax.clear_caches()  # a study compiles many models: keep memory flat
        if pruned:
            trial.set_user_attr("pruned_epoch", pruned["epoch"])
            self.say(
                f"trial {number}: pruned after epoch {pruned['epoch']} "
                f"(val_{key} = {pruned['value']:.4g})"
            )
            raise optuna.TrialPruned(f"pruned after epoch {pruned['epoch']}")
        if final is None:
            raise ValueError(
                f"the run has no validation {key} (no validation set, or no such labels); "
                "choose another objective"
            )
        self.say(
            f"trial {number}: val_{key} = {final:.4g}, {summary['elapsed_s']:.0f} s training, "
            f"{n_params} parameters"
        )
        return float(final)


def run_study(
    spec: TuneSpec, *, pruner: Any = None, say: Callable[[str], None] = print
) -> Any:
    """Run (or resume) the study until it has ``trials`` finished trials; returns the Optuna
    study. ``pruner``: an Optuna pruner instead of the configured one (for tests and tools).

    A trial whose configuration or training fails (e.g. a combination the model rejects, a
    non-finite loss) is recorded as failed with its error and the study goes on.
    """
    from jat.data.structure import DataError
    from jat.training.errors import RunError

    with study_lock(spec.study_dir):
        trials_dir = spec.study_dir / TRIALS_DIR
        if not (spec.study_dir / STUDY_FILE).exists() and trials_dir.is_dir() and any(
            trials_dir.iterdir()
        ):
            raise StudyError(
                f"{trials_dir} has trial runs but {spec.study_dir / STUDY_FILE} is missing: "
                "the study cannot be resumed without it; move the trials away or use another "
                "study_dir"
            )
        study, storage = open_study(spec, pruner)
        for number in recover(study, storage):
            say(f"trial {number} was interrupted: retrying its parameters")
        done = finished(study)
        remaining = max(spec.settings.trials - done, 0)
        if done:
            say(f"{spec.study_dir}: {done} of {spec.settings.trials} trials done")
        if remaining:
            study.optimize(
                Objective(spec, say),
                n_trials=remaining,
                catch=(ConfigError, DataError, RunError, ValueError, ArithmeticError),
            )
        return study


__all__ = [
    "LOCK_FILE",
    "STUDY_FILE",
    "TRIALS_DIR",
    "Objective",
    "StudyError",
    "StudyInUseError",
    "finished",
    "inference_time",
    "make_pruner",
    "make_sampler",
    "open_study",
    "recover",
    "run_study",
]
