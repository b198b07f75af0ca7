"""Command line: ``python -m jat.evaluate RUN_DIR DATA... [options]``.

Tests a trained potential (a run directory of ``python -m jat.train``, whose best model is used,
or a saved potential) on reference data in any format the readers take: energy (per structure
and per atom), force and stress MAE/RMSE, per species; parity plots; for committees the NLL,
the Spearman correlation of |error| with σ (per structure and per atom), 1σ/2σ coverage, the
miscalibration area and an error-against-σ plot. The figures go to ``--out`` (default:
``RUN_DIR/evaluation``) as ``metrics.json`` and PNG files; the last line printed is the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jat.uncertainty import CALIBRATION_METHODS

EPILOG = """\
examples:
  python -m jat.evaluate runs/ean-20261121-101500 ../shared/data/ean/ean_15pairs_dft.jsonl
  python -m jat.evaluate runs/my-run builtin --out /tmp/eval
  python -m jat.evaluate runs/my-run --split test            # the run's own held-out set
  python -m jat.evaluate runs/committee val.extxyz --calibrate runs/committee-calibrated
  python -m jat.evaluate runs/committee --split validation --calibrate runs/committee-cal
  python -m jat.evaluate runs/com --split validation --calibrate runs/cal --calibration coverage
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jat.evaluate",
        description="Errors (and, for committees, uncertainty figures) of a potential on data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("potential", metavar="RUN_DIR", help="run directory or saved potential")
    parser.add_argument(
        "data", nargs="*", metavar="DATA", help="data files, or 'builtin' (or use --split)"
    )
    parser.add_argument(
        "--split",
        choices=("train", "validation", "test"),
        help="a run directory's own set, as the run split its data (split.json is checked)",
    )
    parser.add_argument("--format", default="auto", help="data format (default: auto)")
    parser.add_argument("--batch-size", type=int, default=16, help="structures per batch")
    parser.add_argument("--out", metavar="DIR", help="where metrics.json and plots go")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG files")
    parser.add_argument(
        "--raw", action="store_true", help="committees: report the uncalibrated σ"
    )
    parser.add_argument(
        "--calibrate",
        metavar="OUT_DIR",
        help="committees: fit the σ calibration on this data (use a validation set, not the "
        "training set) and save the calibrated potential to OUT_DIR",
    )
    parser.add_argument(
        "--calibration",
        choices=CALIBRATION_METHODS,
        default="nll",
        help="with --calibrate: 'nll' the Gaussian NLL minimum (default), 'coverage' the factor "
        "putting 68.27%% of the errors within ±1σ (for heavy-tailed errors)",
    )
    args = parser.parse_args(argv)
    if bool(args.data) == bool(args.split):
        parser.error("give DATA files or --split, not both and not neither")
    try:
        return _run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from jat import Potential
    from jat.data import read_structures
    from jat.evaluation import (
        cross_fitted_coverage,
        error_metrics,
        evaluate,
        fit_calibration,
        write_plots,
    )

    source = Path(args.potential)
    potential = Potential.load(source)
    if args.split:
        structures = run_split(source, args.split)
        data_name = f"{source}: {args.split} set"
    else:
        structures = list(read_structures(args.data, format=args.format))
        data_name = ", ".join(map(str, args.data))
    print(f"{len(structures)} structures from {data_name}", file=sys.stderr)
    raw = args.raw or args.calibrate is not None
    ev = evaluate(potential, structures, batch_size=args.batch_size, calibrated=not raw)
    metrics = error_metrics(ev)
    if args.calibrate is not None:
        if not potential.members:
            raise ValueError("--calibrate needs a committee (a potential with members >= 2)")
        calibration = fit_calibration(ev, fitted_on=data_name, method=args.calibration)
        potential.with_calibration(calibration).save(args.calibrate)
        metrics["calibration"] = calibration.to_dict()
        metrics["calibrated_uncertainty"] = error_metrics(
            evaluate(potential.with_calibration(calibration), structures,
                     batch_size=args.batch_size)
        ).get("uncertainty", {})
        if len(structures) >= 2 and np.isfinite(ev.forces_ref).any():
            # the coverage on this data is fitted; this one scores each half with the other's
            metrics["calibrated_uncertainty"]["forces_cross_fitted"] = cross_fitted_coverage(
                ev, args.calibration
            )
        print(f"calibrated potential saved to {args.calibrate}", file=sys.stderr)
    out = Path(args.out) if args.out else _default_out(source)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plots = [] if args.no_plots else write_plots(ev, out, title=str(source))
    _print_table(metrics)
    for p in plots:
        print(f"wrote {p}", file=sys.stderr)
    print(json.dumps(metrics))
    return 0


def run_split(run_dir: Path, name: str) -> list:
    """The structures of set ``name`` ("train", "validation", "test") of the run in
    ``run_dir``, split again from its recorded configuration; a ValueError if the data no
    longer give the split the run recorded in ``split.json``, or if the set is empty."""
    from jat.config import load_config
    from jat.training.data import check_split, load_splits
    from jat.training.rundir import CONFIG_FILE

    config = run_dir / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir}: --split needs a run directory (no {CONFIG_FILE})")
    sets = load_splits(load_config(config))
    check_split(run_dir, sets)
    if not sets[name]:
        raise ValueError(f"{run_dir}: the run's {name} set is empty")
    return sets[name]


def _default_out(source: Path) -> Path:
    """``RUN_DIR/evaluation`` for a run directory; beside a saved potential otherwise (never
    inside it: a potential directory holds its two files only)."""
    if (source / "metadata.json").exists():
        return source.parent / f"{source.name}-evaluation"
    return source / "evaluation"


def _print_table(m: dict) -> None:
    rows = [
        ("energy", "eV", m.get("energy")),
        ("energy per atom", "eV/atom", m.get("energy_per_atom")),
        ("forces", "eV/Å", m.get("forces")),
        ("stress", "eV/Å³", m.get("stress")),
    ]
    rows += [
        (f"  forces on {sym}", "eV/Å", v) for sym, v in m.get("forces_per_species", {}).items()
    ]
    for key, v in m.get("properties", {}).items():  # in jat units; a dipole also in Debye
        rows.append((key, "jat units", v))
        if "mae_debye" in v:
            debye = {"mae": v["mae_debye"], "rmse": v["rmse_debye"], "n": v["n"]}
            rows.append((f"  {key}", "D", debye))
    print(f"{'quantity':22s} {'MAE':>12s} {'RMSE':>12s} {'n':>8s}", file=sys.stderr)
    for name, unit, v in rows:
        if v:
            print(f"{name + ' (' + unit + ')':22s} {v['mae']:12.5g} {v['rmse']:12.5g} "
                  f"{v['n']:8d}", file=sys.stderr)
    for q, u in m.get("uncertainty", {}).items():
        parts = ", ".join(f"{k} {v:.3g}" for k, v in u.items())
        print(f"σ of {q}: {parts}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
