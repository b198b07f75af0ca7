"""k-fold cross-validation: k runs in one run directory, their CV estimate, and their committee.

With ``data.split.kfold: k`` (and no ``fold``), ``python -m jat.train`` trains k runs in
``<run>/fold-<i>``, run i validating on fold i of the training files (the same seeded cut for
all, :func:`jat.training.splits.split_indices`). Each fold is an ordinary run (claimed, locked,
checkpointed, resumable). When all are done the run directory gets ``summary.json`` with every
fold's validation figures and their mean and standard deviation over folds (the CV estimate),
and ``best/``: the k best models as one committee (:meth:`jat.Potential.committee`), so
``jat.Potential.load(run_dir)`` gives a potential with σ. ``--resume <run>`` continues with the
first unfinished fold.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from typing import Any

from jat.config import Config
from jat.potential import Potential
from jat.training.errors import RunCompleteError
from jat.training.progress import Progress, describe
from jat.training.rundir import SUMMARY_FILE, RunDirectory, holds_run
from jat.training.state import RunProgress

FOLD_PREFIX = "fold-"


def fold_config(cfg: Config, run: RunDirectory, fold: int) -> Config:
    """The configuration of fold ``fold``'s run: its own directory inside ``run``."""
    split = cfg.data.split.model_copy(update={"fold": fold})
    data = cfg.data.model_copy(update={"split": split})
    return cfg.model_copy(
        update={
            "data": data,
            "run_dir": str(run.path / f"{FOLD_PREFIX}{fold}"),
            "name": f"{cfg.name}-{FOLD_PREFIX}{fold}",
        }
    )


def cv_estimate(summaries: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over folds (sample, ddof 1) of every numeric validation
    figure the folds share."""
    figures = [s.get("validation", {}) for s in summaries]
    keys = sorted(set.intersection(*(set(f) for f in figures))) if figures else []
    out = {}
    for key in keys:
        values = [float(f[key]) for f in figures if isinstance(f[key], (int, float))]
        if len(values) == len(figures) and all(math.isfinite(v) for v in values):
            out[key] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    return out


def cross_validate(
    cfg: Config,
    run: RunDirectory,
    resuming: bool,
    out: Progress,
    train_one: Callable[[Config, RunDirectory, bool], tuple[Potential, dict[str, Any]]],
) -> tuple[Potential, dict[str, Any]]:
    """Train (or resume) every fold of ``cfg`` inside ``run`` with ``train_one(cfg, run,
    resuming) -> (best potential, summary)`` (the ordinary single-run training), then write
    the CV summary and the committee; returns (committee, summary)."""
    k = cfg.data.split.kfold
    if resuming and run.has(SUMMARY_FILE) and (run.path / "best").is_dir():
        raise RunCompleteError(
            f"{run.path} is complete: all {k} folds are trained and their committee is in "
            f"{run.path / 'best'} (jat.Potential.load({str(run.path)!r}))"
        )
    results = []
    for fold in range(k):
        fcfg = fold_config(cfg, run, fold)
        path = run.path / f"{FOLD_PREFIX}{fold}"
        if (path / SUMMARY_FILE).is_file() and (path / "best").is_dir():
            out.message(f"fold {fold + 1} of {k}: complete ({path})")
            summary = json.loads((path / SUMMARY_FILE).read_text())
            results.append((path, Potential.load(path), summary))
            continue
        out.message(f"fold {fold + 1} of {k}: {path}")
        if holds_run(path):
            fold_run = RunDirectory.open(path)
            again = True
        else:
            fold_run = RunDirectory.claim(str(path), run.path, fcfg.name, _dump(fcfg))
            again = False
        with fold_run:
            results.append((path, *train_one(fcfg, fold_run, again)))
    committee = Potential.committee([pot for _, pot, _ in results])
    summaries = [s for _, _, s in results]
    run.save_checkpoint("best", committee, None, _final_progress(summaries))
    summary = {
        "kfold": k,
        "folds": [
            {"fold": i, "run_dir": str(path), "validation": s.get("validation", {}),
             "best_epoch": s.get("best_epoch")}
            for i, (path, _, s) in enumerate(results)
        ],
        "cv": cv_estimate(summaries),
        "committee": str(run.path / "best"),
    }
    run.write_json(SUMMARY_FILE, summary)
    for key, v in summary["cv"].items():
        if key in ("forces_mae", "energy_atom_mae", "energy_mae", "forces_rmse"):
            out.message(f"cross-validation {key}: {v['mean']:.4g} ± {v['std']:.2g} over {k} folds")
    folds = "; ".join(describe(s.get("validation", {})) for s in summaries)
    out.message(f"the {k} fold models form a committee in {run.path / 'best'}; folds: {folds}")
    return committee, summary


def folds_started(run: RunDirectory) -> bool:
    """Whether any fold of a cross-validation run in ``run`` holds a run (then the parent
    directory must be kept, with its configuration, for ``--resume``)."""
    return any(holds_run(p) for p in run.path.glob(f"{FOLD_PREFIX}*") if p.is_dir())


def _dump(cfg: Config) -> str:
    from jat.config import dump_config

    return dump_config(cfg)


def _final_progress(summaries: list[dict[str, Any]]) -> RunProgress:
    epochs = [int(s.get("epochs", 0) or 0) for s in summaries]
    return RunProgress(epoch=max(epochs) if epochs else 0)


__all__ = ["FOLD_PREFIX", "cross_validate", "cv_estimate", "fold_config", "folds_started"]
