"""Hyperparameter search with Optuna: ``python -m jat.tune TUNE.yaml [key=value ...]``.

A tuning file names a base training configuration and a search space over its dotted keys
(:mod:`jat.tune.space`); each trial is one time-budgeted training run, pruned on its validation
curve (:mod:`jat.tune.study`); the study lives in ``STUDY_DIR/study.db`` and resumes when the
same command runs again; the outputs are ``results.csv``, ``pareto.png`` and ``best.yaml``
(:mod:`jat.tune.report`). Optuna is an optional dependency (``pip install optuna``).

    spec = load_tune("examples/tune_ean.yaml", ["trials=5"])
    study = run_study(spec)
    summary = report(study, spec)
"""

from jat.tune.report import BEST_FILE, PARETO_FILE, RESULTS_FILE, report
from jat.tune.space import METRICS, Param, TuneSettings, TuneSpec, load_tune
from jat.tune.study import STUDY_FILE, TRIALS_DIR, StudyError, StudyInUseError, run_study

__all__ = [
    "BEST_FILE",
    "METRICS",
    "PARETO_FILE",
    "RESULTS_FILE",
    "STUDY_FILE",
    "TRIALS_DIR",
    "Param",
    "StudyError",
    "StudyInUseError",
    "TuneSettings",
    "TuneSpec",
    "load_tune",
    "report",
    "run_study",
]
