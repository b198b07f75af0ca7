"""Command line: ``python -m jat.tune TUNE.yaml [key=value ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

EPILOG = """\
examples:
  python -m jat.tune examples/tune_ean.yaml                 # run (or resume) the study
  python -m jat.tune examples/tune_ean.yaml trials=40       # more trials in the same study
  python -m jat.tune examples/tune_ean.yaml time_budget=5m study_dir=studies/quick
  python -m jat.tune examples/tune_ean.yaml base.training.batch_size=4 search.model.layers.high=6
  python -m jat.tune examples/tune_ean.yaml --check         # check the file and the space only
  python -m jat.tune examples/tune_ean.yaml --report        # rewrite the outputs, no training

outputs in the study directory: study.db (the study; rerun the command to resume it),
trials/NNNN (one training run per trial), results.csv, pareto.png, best.yaml
(python -m jat.train STUDY_DIR/best.yaml trains the best configuration)
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jat.tune",
        description="Hyperparameter search with Optuna over a jat training configuration.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="TUNE.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--check", action="store_true",
                        help="check the tuning file and the search space, print them and exit")
    parser.add_argument("--report", action="store_true",
                        help="write results.csv, pareto.png and best.yaml of the study and exit")
    ns = parser.parse_intermixed_args(argv)

    from jat.config import ConfigError
    from jat.tune import load_tune

    try:
        spec = load_tune(ns.config, ns.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    s = spec.settings
    print(f"study {spec.study_name} in {spec.study_dir}: {s.trials} trials, "
          f"{s.direction} {spec.objective_column}, pruner {s.pruner}, sampler {s.sampler}")
    for key, param in spec.search.items():
        print(f"  {key}: {param.describe()}")
    if ns.check:
        print("the tuning file and the search space are valid")
        return 0

    from jat.tune.report import format_table, report
    from jat.tune.study import STUDY_FILE, StudyError, open_study, run_study, study_lock

    try:
        if ns.report:
            if not (spec.study_dir / STUDY_FILE).is_file():
                print(f"error: no study in {spec.study_dir} (no {STUDY_FILE})", file=sys.stderr)
                return 2
            with study_lock(spec.study_dir):
                study, _ = open_study(spec)
        else:
            study = run_study(spec)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ConfigError, StudyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume the study in {spec.study_dir}",
              file=sys.stderr)
        return 130
    summary = report(study, spec)
    from jat.tune.report import rows

    print()
    print(format_table(rows(study, spec), spec))
    if summary["best"]:
        b = summary["best"]
        print(f"\nbest: trial {b['trial']}, {spec.objective_column} = {b['value']:.4g}; "
              f"train it with: python -m jat.train {summary['best_config']}")
    else:
        print("\nno trial completed yet: no best.yaml")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from jat.runtime import reexec_with_huge_pages

    reexec_with_huge_pages()
    sys.exit(main())
