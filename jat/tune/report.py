"""A study's outputs: ``results.csv`` (one row per trial, best first), ``pareto.png``
(validation error against training time and against inference cost, Pareto fronts marked) and
``best.yaml`` (the best trial's complete training configuration, for ``python -m jat.train``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jat.config import config_from_dict, config_to_dict, dump_config, load_config
from jat.tune.space import TuneSpec

RESULTS_FILE = "results.csv"
PARETO_FILE = "pareto.png"
BEST_FILE = "best.yaml"
COLUMNS = ("trial", "state", "objective", "train_time_s", "wall_time_s", "inference_ms",
           "inference_atoms", "n_params", "epochs")


def _state(trial: Any) -> str:
    name = trial.state.name.lower()
    if name == "fail" and trial.user_attrs.get("interrupted"):
        return "interrupted"
    return name


def rows(study: Any, spec: TuneSpec) -> list[dict[str, Any]]:
    """One dict per trial: the ``COLUMNS``, the parameters (by dotted key), ``run_dir`` and
    ``note``; complete trials first by objective (best first), then pruned ones (their
    best model's value), then the rest."""
    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        state = _state(t)
        value = t.value if state == "complete" else a.get("final_value")
        note = a.get("error", "")
        if state == "pruned":
            note = f"pruned after epoch {a.get('pruned_epoch', '?')}"
        if "retry_of" in a:
            note = (note + "; " if note else "") + f"retry of trial {a['retry_of']}"
        row = {
            "trial": t.number,
            "state": state,
            "objective": value,
            "train_time_s": a.get("train_time_s"),
            "wall_time_s": a.get("wall_time_s"),
            "inference_ms": a.get("inference_ms"),
            "n_params": a.get("n_params"),
            "epochs": a.get("epochs"),
            "inference_atoms": a.get("inference_atoms"),
        }
        row.update({k: t.params.get(k) for k in spec.search})
        row.update(run_dir=a.get("run_dir", ""), note=note)
        out.append(row)
    sign = -1.0 if spec.settings.direction == "maximize" else 1.0
    rank = {"complete": 0, "pruned": 1}

    def order(r: dict[str, Any]) -> tuple:
        v = r["objective"]
        return (rank.get(r["state"], 2), v is None, sign * v if v is not None else 0.0,
                r["trial"])

    return sorted(out, key=order)


def write_results(path: Path, table: Sequence[dict[str, Any]], spec: TuneSpec) -> None:
    fields = list(COLUMNS) + list(spec.search) + ["run_dir", "note"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        header = dict(zip(fields, fields, strict=True))
        header["objective"] = spec.objective_column
        writer.writerow(header)
        for row in table:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})


def pareto_front(points: Sequence[tuple[float, float]], maximize: bool = False) -> list[int]:
    """Indices of the points (cost, value) no other point beats in both (lower cost; lower
    value, or higher when ``maximize``), by increasing cost."""
    sign = -1.0 if maximize else 1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], sign * points[i][1]))
    front, best = [], math.inf
    for i in order:
        v = sign * points[i][1]
        if v < best:
            front.append(i)
            best = v
    return front


def plot_pareto(path: Path, table: Sequence[dict[str, Any]], spec: TuneSpec) -> str | None:
    """Two panels: the objective against training time and against inference time, complete
    trials as dots with their Pareto front, pruned ones as crosses. None without matplotlib."""
    from jat.plotting import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None
    maximize = spec.settings.direction == "maximize"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    panels = (
        ("train_time_s", "training time (s)"),
        ("inference_ms", "inference: energy+forces per structure (ms)"),
    )
    atoms = {r.get("inference_atoms") for r in table if r.get("inference_atoms")}
    if len(atoms) == 1:
        panels = (panels[0], (panels[1][0], panels[1][1].replace("structure", f"{atoms.pop()}"
                                                                  "-atom structure")))
    for ax, (column, label) in zip(axes, panels, strict=True):
        done = [r for r in table if r["state"] == "complete" and r["objective"] is not None
                and r.get(column) is not None]
        pruned = [r for r in table if r["state"] == "pruned" and r["objective"] is not None
                  and r.get(column) is not None]
        if pruned:
            ax.scatter([r[column] for r in pruned], [r["objective"] for r in pruned],
                       marker="x", color="0.6", label="pruned (best model at the stop)")
        if done:
            pts = [(float(r[column]), float(r["objective"])) for r in done]
            ax.scatter(*zip(*pts, strict=True), color="C0", label="complete")
            front = pareto_front(pts, maximize)
            fx, fy = zip(*(pts[i] for i in front), strict=True)
            ax.step(fx, fy, where="post", color="C3", lw=1.2)
            ax.scatter(fx, fy, s=70, facecolors="none", edgecolors="C3", label="Pareto front")
            for i in front:
                ax.annotate(str(done[i]["trial"]), pts[i], textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
            best = done[0]
            ax.scatter([best[column]], [best["objective"]], marker="*", s=180, color="C1",
                       zorder=3, label=f"best (trial {best['trial']})")
        ax.set_xlabel(label)
        ax.set_ylabel(spec.objective_column)
        ax.grid(alpha=0.3)
        if done or pruned:
            ax.legend(fontsize=8)
    fig.suptitle(f"study {spec.study_name}: {len(table)} trials")
    return save_figure(fig, path)


def write_best(path: Path, table: Sequence[dict[str, Any]], spec: TuneSpec) -> dict | None:
    """The best complete trial's configuration as a training config (its own run directory
    and name replaced by ``<output_dir>/<study>-best-<time>``); None when no trial completed."""
    done = [r for r in table if r["state"] == "complete"]
    if not done:
        if path.exists():
            path.unlink()
        return None
    best = done[0]
    cfg = load_config(Path(best["run_dir"]) / "config.yaml")
    raw = config_to_dict(cfg)
    raw["run_dir"] = None
    raw["name"] = f"{spec.study_name}-best"
    raw["output_dir"] = spec.base_config.output_dir
    cfg = config_from_dict(raw, str(path))
    params = ", ".join(f"{k} = {best[k]}" for k in spec.search)
    header = (
        f"# best trial {best['trial']} of study {spec.study_name} ({spec.study_dir}): "
        f"{spec.objective_column} = {best['objective']:.6g}\n# {params}\n"
        f"# python -m jat.train {path}\n"
    )
    path.write_text(header + dump_config(cfg), encoding="utf-8")
    return best


def format_table(table: Sequence[dict[str, Any]], spec: TuneSpec, limit: int = 15) -> str:
    """The first ``limit`` rows as aligned text."""
    cols = ["trial", "state", "objective", "train_time_s", "inference_ms", "n_params",
            *spec.search]
    names = {"objective": spec.objective_column, "train_time_s": "train_s",
             "inference_ms": "infer_ms"}

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = [[names.get(c, c) for c in cols]]
    lines += [[cell(r.get(c)) for c in cols] for r in table[:limit]]
    widths = [max(len(line[k]) for line in lines) for k in range(len(cols))]
    text = ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in lines]
    if len(table) > limit:
        text.append(f"… {len(table) - limit} more in {spec.study_dir / RESULTS_FILE}")
    return "\n".join(text)


def report(study: Any, spec: TuneSpec) -> dict[str, Any]:
    """Write the outputs and return the summary (what the command prints as JSON)."""
    table = rows(study, spec)
    d = spec.study_dir
    write_results(d / RESULTS_FILE, table, spec)
    pareto = plot_pareto(d / PARETO_FILE, table, spec)
    best = write_best(d / BEST_FILE, table, spec)
    counts: dict[str, int] = {}
    for r in table:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary: dict[str, Any] = {
        "study_dir": str(d),
        "study": spec.study_name,
        "objective": spec.objective_column,
        "direction": spec.settings.direction,
        "trials": counts,
        "results": str(d / RESULTS_FILE),
        "pareto": pareto,
        "best_config": str(d / BEST_FILE) if best else None,
        "best": None,
    }
    if best:
        summary["best"] = {
            "trial": best["trial"],
            "value": best["objective"],
            "params": {k: best[k] for k in spec.search},
            "train_time_s": best["train_time_s"],
            "inference_ms": best["inference_ms"],
            "n_params": best["n_params"],
            "run_dir": best["run_dir"],
        }
    return summary


__all__ = [
    "BEST_FILE",
    "PARETO_FILE",
    "RESULTS_FILE",
    "format_table",
    "pareto_front",
    "plot_pareto",
    "report",
    "rows",
    "write_best",
    "write_results",
]
