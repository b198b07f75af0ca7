"""The training run: data, split, energy reference, buckets, optimiser, epochs, checkpoints.

``train(config)`` starts a run in a new run directory; ``train(config, resume=run_dir)`` (or
``resume(run_dir)``) continues an interrupted one from its ``last`` checkpoint, so that the
epochs after it are computed exactly as if the run had not stopped (shuffling is seeded per
epoch, the learning rate is a function of the step, and optimiser and EMA state are restored).

Run directory: ``config.yaml`` (resolved), ``split.json``, ``metrics.jsonl`` (one JSON row per
epoch), ``last/`` and ``best/`` (checkpoints; ``jat.Potential.load(run_dir)`` loads ``best``),
``summary.json`` at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers

from jat.config import Config, config_to_dict, dump_config, load_config
from jat.data.readers import detect_format, read_structures
from jat.data.readers import resolve_path as resolve_data_file
from jat.data.structure import Structure
from jat.dtypes import precision
from jat.models.repulsion import data_radii
from jat.potential import Potential
from jat.training import checkpoint, optim, steps
from jat.training.dataset import Dataset, align_edge_slots, build_dataset, choose_buckets
from jat.training.progress import Progress, WandbLogger, describe
from jat.training.splits import SETS, fit_energy_reference, split_indices

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
BUDGET_MARGIN = 0.97  # fraction of the remaining budget the planned epochs may fill
REPLAN_EPOCH = 3  # with a time budget, the plan is corrected once from the epochs 2..3 timings


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run produced: its directory, the best potential and the final metrics."""

    run_dir: Path
    potential: Potential
    summary: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# data


def _format_of(path: str, fmt: str) -> str:
    """The reader format of an expanded configured path (``data.format``, or detected)."""
    return fmt if fmt != "auto" else detect_format(resolve_data_file(path))


def expand_path(path: str) -> str:
    """``$JAT_DATA_DIR`` in a configured path stands for :func:`jat.data.data_dir` (the variable
    when set, else ``../shared/data``); ``~`` and other environment variables expand too."""
    from jat.data import data_dir

    if path == "builtin":
        return path
    for token in ("${JAT_DATA_DIR}", "$JAT_DATA_DIR"):
        path = path.replace(token, str(data_dir()))
    return os.path.expanduser(os.path.expandvars(path))


def read_files(paths: Sequence[str], cfg: Config) -> list[Structure]:
    """All structures of ``paths`` with the reader options that apply to each file's format."""
    out: list[Structure] = []
    for path in map(expand_path, paths):
        fmt = _format_of(path, cfg.data.format)
        options: dict[str, Any] = {}
        if fmt == "ani1":
            options = {
                "fraction": cfg.data.ani1.fraction,
                "high_energy": cfg.data.ani1.high_energy,
                "seed": cfg.seed,
            }
        elif fmt == "neuralil" and cfg.data.composition is not None:
            options = {"composition": cfg.data.composition}
        out.extend(read_structures(path, format=fmt, **options))
    return out


def load_splits(cfg: Config) -> tuple[dict[str, list[Structure]], dict[str, list[str]]]:
    """Structures of every set and, per set, their sources (for ``split.json``)."""
    train_files = read_files(cfg.data.train, cfg)
    if not train_files:
        raise ValueError(f"no structures in {list(cfg.data.train)}")
    by = cfg.data.split.by
    if by == "auto":
        formats = [_format_of(expand_path(p), cfg.data.format) for p in cfg.data.train]
        is_ani1 = all(f == "ani1" for f in formats)
        by = "molecule" if is_ani1 else "configuration"
    val_given = cfg.data.validation is not None
    test_given = cfg.data.test is not None
    idx = split_indices(
        train_files,
        by=by,
        validation=0 if val_given else cfg.data.split.validation,
        test=0 if test_given else cfg.data.split.test,
        n_train=cfg.data.split.n_train,
        exclude_formulas=cfg.data.split.exclude_formulas,
        seed=cfg.seed,
    )
    sets = {name: [train_files[k] for k in idx[name]] for name in SETS}
    if val_given:
        sets["validation"] = read_files(cfg.data.validation, cfg)
    if test_given:
        sets["test"] = read_files(cfg.data.test, cfg)
    sources = {name: [s.source for s in sets[name]] for name in SETS}
    return sets, sources


def check_split(run_dir: Path, sources: dict[str, list[str]]) -> None:
    """Raise unless ``sources`` (from :func:`load_splits`) is the split the run recorded."""
    saved = json.loads((run_dir / SPLIT_FILE).read_text())
    if saved != sources:
        raise ValueError(
            f"{run_dir / SPLIT_FILE}: the data no longer gives the same split; "
            "the files changed since the run started"
        )


def _repulsion(cfg: Config, train: list[Structure], species: tuple[str, ...]) -> dict | None:
    """The ``repulsion`` argument of ``Potential.create`` for this configuration."""
    if cfg.model.repulsion == "none":
        return None
    spec = {"kind": cfg.model.repulsion, "radius_scale": cfg.model.repulsion_radius_scale}
    if cfg.model.repulsion_radii == "data":
        spec["radii"] = data_radii(train, species, cfg.model.cutoff)
    return spec


def _species(cfg: Config, sets: dict[str, list[Structure]]) -> tuple[str, ...]:
    seen = {x for structures in sets.values() for s in structures for x in s.symbols}
    if cfg.data.species is None:
        return tuple(sorted(seen, key=lambda x: atomic_numbers[x]))
    missing = sorted(seen - set(cfg.data.species))
    if missing:
        raise ValueError(f"data.species {list(cfg.data.species)} lacks {missing} found in the data")
    return tuple(cfg.data.species)


# ---------------------------------------------------------------------------------------------
# run directory


def _new_run_dir(cfg: Config) -> Path:
    if cfg.run_dir is not None:
        run_dir = Path(cfg.run_dir)
        if (run_dir / "last").exists() or (run_dir / METRICS_FILE).exists():
            raise FileExistsError(
                f"{run_dir} already holds a run; resume it with "
                f"`python -m jat.train --resume {run_dir}` or choose another run_dir"
            )
        return run_dir
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
    k = 1
    while run_dir.exists():
        run_dir = Path(cfg.output_dir) / f"{cfg.name}-{stamp}-{k}"
        k += 1
    return run_dir


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _truncate_rows(path: Path, last_epoch: int) -> list[dict[str, Any]]:
    """Keep the metric rows up to ``last_epoch`` (rows written after the checkpoint go)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a row cut short by a crash
            if row.get("epoch", math.inf) <= last_epoch:
                rows.append(row)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return rows


# ---------------------------------------------------------------------------------------------
# the run


class _Run:
    """State and compiled functions of one training run (internal to :func:`train`)."""

    def __init__(self, cfg: Config, run_dir: Path, progress: Progress, hooks: dict):
        self.cfg = cfg
        self.run_dir = run_dir
        self.out = progress
        self.hooks = hooks
        self.t0 = time.monotonic()
        self.loss_spec = steps.LossSpec(
            forces_weight=cfg.loss.forces_weight,
            energy_weight=cfg.loss.energy_weight,
            forces_alpha=cfg.loss.forces_alpha,
            energy_alpha=cfg.loss.energy_alpha,
        )
        self.compilations = {"train": 0, "eval": 0}

    # -- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        self.sets, self.sources = load_splits(cfg)
        train = self.sets["train"]
        need_forces = cfg.loss.forces_weight > 0
        if need_forces and not any(s.forces is not None for s in train):
            raise ValueError(
                "the training data has no forces; set loss.forces_weight=0 and "
                "loss.energy_weight>0 to train on energies"
            )
        if cfg.loss.energy_weight > 0 and not any(s.energy is not None for s in train):
            raise ValueError("the training data has no energies; set loss.energy_weight=0")
        self.species = _species(cfg, self.sets)
        if cfg.training.energy_reference == "fit":
            shift, scale = fit_energy_reference(train, self.species, need_forces)
        else:
            shift, scale = np.zeros(len(self.species)), 1.0
        self.potential = Potential.create(
            cfg.model.name,
            self.species,
            cfg.model.cutoff,
            seed=cfg.seed,
            dtype=cfg.model.dtype,
            repulsion=_repulsion(cfg, train, self.species),
            **dict(cfg.model.hyper),
        ).with_energy_reference(shift=shift, scale=np.full(len(self.species), scale))
        sizes = [s.n_atoms for structures in self.sets.values() for s in structures]
        bounds = choose_buckets(sizes, cfg.training.max_buckets)
        self.data: dict[str, Dataset] = align_edge_slots(
            {
                name: build_dataset(self.sets[name], self.species, cfg.model.cutoff, shift, bounds)
                for name in SETS
                if self.sets[name]
            }
        )
        self.dtype = jnp.dtype(cfg.model.dtype)
        self.eval_forces = any(s.forces is not None for s in train)
        self.batch = cfg.training.batch_size
        self.eval_batch = cfg.training.eval_batch_size or self.batch
        self.steps_per_epoch = len(self.data["train"].batches(self.batch))
        self.tx = optim.optimizer(
            cfg.optimizer.name, cfg.optimizer.weight_decay, cfg.optimizer.clip_norm
        )
        self._compile()
        shapes = sorted({b.shape for d in self.data.values() for b in d.buckets})
        counts = ", ".join(f"{k}: {len(v)}" for k, v in self.sets.items() if v)
        self.out.message(
            f"data: {counts} structures; species {', '.join(self.species)}; "
            f"batch shapes (atoms, edges) {shapes}"
        )
        self.out.message(
            f"energy reference: shift "
            f"{dict(zip(self.species, np.round(shift, 4).tolist(), strict=True))} eV, "
            f"scale {scale:.4g} eV"
        )
        rep = self.potential.repulsion
        if rep is not None:
            r = rep.pair_radii
            pairs = ", ".join(
                f"{a}-{b} {r[i, j]:.3f}"
                for i, a in enumerate(self.species)
                for j, b in enumerate(self.species)
                if j >= i
            )
            self.out.message(f"ZBL repulsion switched off at (Å): {pairs}")
        n_params = sum(np.size(x) for x in jax.tree.leaves(self.potential.params))
        self.out.message(f"model: {cfg.model.name} ({n_params} parameters), run dir {self.run_dir}")

    def _compile(self) -> None:
        model = self.potential.energy_model

        def count(kind):
            def deco(fn):
                @functools.wraps(fn)
                def traced(*a, **k):
                    self.compilations[kind] += 1  # runs once per trace, i.e. per shape
                    return fn(*a, **k)

                return traced

            return deco

        self.train_step = jax.jit(
            count("train")(
                functools.partial(
                    steps.train_step, model, self.tx, self.loss_spec, self.cfg.optimizer.ema_decay
                )
            ),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(
            count("eval")(
                functools.partial(steps.eval_step, model, self.loss_spec, self.eval_forces)
            )
        )
        self.scale = jnp.asarray(self.potential.energy_scale, self.dtype)

    def initial_state(self) -> steps.TrainState:
        params = self.potential.params
        return steps.TrainState(
            params=params,
            opt_state=self.tx.init(params),
            ema=jax.tree.map(jnp.copy, params),
            step=jnp.zeros((), jnp.int32),
        )

    # -- planning -----------------------------------------------------------------------------

    def plan_epochs(self, state: steps.TrainState, elapsed: float) -> int:
        """Epochs to run: ``training.epochs``, or with a time budget as many as fit in it,
        estimated by timing compiled steps of every bucket on a throwaway copy of the state."""
        epochs = self.cfg.training.epochs
        budget = self.cfg.training.time_budget
        if budget is None:
            return epochs
        train = self.data["train"]
        per_epoch = 0.0
        for b, bucket in enumerate(train.buckets):
            n_batches = sum(1 for k, _ in train.batches(self.batch) if k == b)
            batch = bucket.batch(np.arange(min(self.batch, len(bucket))), self.batch, self.dtype)
            scratch = jax.tree.map(jnp.copy, state)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                scratch, m = self.train_step(scratch, self.scale, batch, np.float32(1e-12))
                jax.block_until_ready(m)
                times.append(time.perf_counter() - t)
            per_epoch += n_batches * min(times[1:])
        if "validation" in self.data:
            t_eval = self._time_eval(state)
            per_epoch += t_eval / self.cfg.training.eval_every
        remaining = budget - elapsed - (time.monotonic() - self.t0)
        fit = int(remaining * BUDGET_MARGIN / max(per_epoch, 1e-9))
        self.out.message(
            f"time budget {budget:.0f} s: an epoch takes about {per_epoch:.2f} s, "
            f"planning {min(max(fit, 1), epochs)} epochs"
        )
        return min(max(fit, 1), epochs)

    def replan_epochs(self, rows: list[dict], epochs: int, remaining: float) -> int:
        """Correct the planned epochs from measured epoch times (epochs 2…REPLAN_EPOCH: the
        first includes compilation), if they differ from the plan by more than 10 %."""
        done = rows[-1]["epoch"]
        measured = float(np.mean([r["epoch_time"] for r in rows[1:]]))
        fit = done + int(remaining * BUDGET_MARGIN / max(measured, 1e-9))
        fit = min(max(fit, done + 1), self.cfg.training.epochs)
        if abs(fit - epochs) <= 0.1 * epochs:
            return epochs
        self.out.message(
            f"epochs take {measured:.2f} s: re-planning {fit} epochs instead of {epochs}"
        )
        return fit

    def _time_eval(self, state) -> float:
        self.evaluate(state.ema, "validation")  # compiles
        t = time.perf_counter()
        self.evaluate(state.ema, "validation")
        return time.perf_counter() - t

    # -- epochs -------------------------------------------------------------------------------

    def evaluate(self, params, name: str) -> dict[str, float]:
        data = self.data.get(name)
        if data is None:
            return {}
        sums = [
            self.eval_step(params, self.scale, batch)
            for _, batch in data.iterate(self.eval_batch, self.dtype)
        ]
        return steps.reduce_sums(sums, self.loss_spec)

    def run_epoch(self, state, epoch: int, epochs: int, step: int, schedule: optim.Schedule):
        """One pass over the shuffled training set from host step counter ``step``; nothing
        waits for the device until the epoch's metrics are gathered at the end."""
        train = self.data["train"]
        rng = np.random.default_rng([self.cfg.seed, epoch])
        parts = []
        batches = train.batches(self.batch, rng)
        rates = schedule.values(step, len(batches))
        t = time.perf_counter()
        for k, (b, rows) in enumerate(batches):
            batch = train.buckets[b].batch(rows, self.batch, self.dtype)
            state, metrics = self.train_step(state, self.scale, batch, rates[k])
            parts.append(metrics)
            if "after_step" in self.hooks:
                self.hooks["after_step"](epoch, k, state)
            self.out.step(epoch, epochs, k + 1, len(batches))
        sums = steps.reduce_sums(parts)  # waits for the epoch's last step
        seconds = time.perf_counter() - t
        n_structures = len(train)
        row = {
            "epoch": epoch,
            "step": step + len(batches),
            "lr": float(rates[-1]),
            "train_loss": sums.get("loss", math.nan),
            **{f"train_{k}": v for k, v in sums.items() if k.startswith("loss_")},
            "train_structures_per_s": n_structures / seconds,
            "train_atoms_per_s": train.n_atoms / seconds,
            "train_time": seconds,
        }
        return state, row

    def refit_energy_shift(self, potential: Potential) -> Potential:
        """After training on forces only, re-fit μ_Z to the trained network: least squares of
        the training residuals E_ref − Σ μ_Z − E_net on element counts. The data sets' targets
        move with it, so energy errors measure the network, not an arbitrary offset."""
        train = self.data["train"]
        params = jax.tree.map(lambda x: jnp.asarray(x, self.dtype), potential.params)
        predict = jax.jit(functools.partial(steps.predict, potential.energy_model, forces=False))
        counts, residual = [], []
        for bucket in train.buckets:
            keep = bucket.has_energy
            for start in range(0, len(bucket), self.eval_batch):
                rows = np.arange(start, min(start + self.eval_batch, len(bucket)))
                batch = bucket.batch(rows, self.eval_batch, self.dtype)
                energies = np.asarray(predict(params, self.scale, batch)[0])[: len(rows)]
                residual.append((bucket.energy[rows] - energies)[keep[rows]])
            counts.append(bucket.element_counts(len(self.species))[keep])
        counts_all, residual_all = np.concatenate(counts), np.concatenate(residual)
        if not len(residual_all):
            return potential
        delta = np.linalg.lstsq(counts_all, residual_all, rcond=None)[0]
        self.data = {k: d.with_energy_shift(delta) for k, d in self.data.items()}
        # the data were built with the run's own fitted shift, so δμ is relative to it
        return potential.with_energy_reference(shift=self.potential.energy_shift + delta)

    def monitor_key(self) -> str:
        monitor = self.cfg.training.monitor
        if monitor == "auto":
            monitor = "forces_mae" if self.cfg.loss.forces_weight > 0 else "energy_mae"
        return {"energy_mae": "energy_atom_mae"}.get(monitor, monitor)


def train(
    config: Config | None = None,
    *,
    resume: str | os.PathLike | None = None,
    progress: Progress | None = None,
    hooks: dict[str, Callable] | None = None,
) -> TrainResult:
    """Train a potential as ``config`` says, or continue the run in ``resume``.

    ``hooks`` (for tests and tools): ``after_step(epoch, step_in_epoch, state)``.
    """
    if resume is not None:
        run_dir = Path(resume)
        config_path = run_dir / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: not a jat run directory (no {CONFIG_FILE})")
        cfg = load_config(config_path)
    else:
        cfg = config if config is not None else load_config(None)
        run_dir = _new_run_dir(cfg)
    out = progress or Progress(cfg.logging.progress)
    with precision(cfg.model.dtype):
        return _train(cfg, run_dir, resume is not None, out, hooks or {})


def resume(run_dir: str | os.PathLike, **kwargs: Any) -> TrainResult:
    """Continue the interrupted run in ``run_dir`` from its last checkpoint."""
    return train(resume=run_dir, **kwargs)


def _train(cfg: Config, run_dir: Path, resuming: bool, out: Progress, hooks: dict) -> TrainResult:
    run = _Run(cfg, run_dir, out, hooks)
    run.setup()
    metrics_path = run_dir / METRICS_FILE
    state = run.initial_state()
    if resuming:
        check_split(run_dir, run.sources)
        state, prog = checkpoint.load_checkpoint(run_dir / "last", state)
        rows = _truncate_rows(metrics_path, prog["epoch"])
        out.message(f"resuming {run_dir} after epoch {prog['epoch']} (step {prog['step']})")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(dump_config(cfg))
        _write_json(run_dir / SPLIT_FILE, run.sources)
        metrics_path.write_text("")
        rows = []
        prog = {
            "epoch": 0,
            "step": 0,
            "elapsed": 0.0,
            "planned_epochs": None,
            "best_score": None,
            "best_epoch": None,
            "bad_epochs": 0,
        }
    elapsed0 = float(prog["elapsed"])
    if prog["planned_epochs"] is None:
        prog["planned_epochs"] = run.plan_epochs(state, elapsed0)
    epochs = int(prog["planned_epochs"])
    schedule = optim.Schedule(
        kind=cfg.optimizer.schedule,
        lr_min=cfg.optimizer.lr_min,
        lr_max=cfg.optimizer.lr_max,
        lr_final=cfg.optimizer.lr_final,
        total_steps=epochs * run.steps_per_epoch,
        steps_per_epoch=run.steps_per_epoch,
        per_epoch=cfg.optimizer.per_epoch,
    )
    logger = None
    if cfg.logging.wandb:
        logger = WandbLogger(
            cfg.logging.wandb_project,
            cfg.logging.wandb_mode,
            run_dir.name,
            config_to_dict(cfg),
            str(run_dir),
        )
        for row in rows:
            logger.log(row)
    key = run.monitor_key()
    budget = cfg.training.time_budget
    stop_reason = "epochs"

    def elapsed() -> float:
        return elapsed0 + time.monotonic() - run.t0

    epoch = prog["epoch"]
    while epoch < epochs:
        epoch += 1
        t_epoch = time.monotonic()
        state, row = run.run_epoch(state, epoch, epochs, prog["step"], schedule)
        improved = False
        if epoch % cfg.training.eval_every == 0 or epoch == epochs:
            val = run.evaluate(state.ema, "validation")
            row.update({f"val_{k}": v for k, v in val.items()})
            score = val.get(key, row["train_loss"] if key == "loss" else None)
            if score is None:
                score = val.get("loss", row["train_loss"])
            if prog["best_score"] is None or score < prog["best_score"]:
                prog["best_score"], prog["best_epoch"], prog["bad_epochs"] = score, epoch, 0
                improved = True
            else:
                prog["bad_epochs"] += 1
        row["epoch_time"] = time.monotonic() - t_epoch
        row["elapsed"] = elapsed()
        row["best"] = improved
        prog.update(epoch=epoch, step=row["step"], elapsed=row["elapsed"])
        ema_pot = run.potential.with_params(state.ema)
        if improved:
            checkpoint.save_checkpoint(run_dir / "best", ema_pot, None, dict(prog))
        _append_row(metrics_path, row)
        rows.append(row)
        if budget is not None and epoch == REPLAN_EPOCH and not prog.get("replanned"):
            epochs = run.replan_epochs(rows, epochs, budget - elapsed())
            prog.update(planned_epochs=epochs, replanned=True)
            schedule = dataclasses.replace(schedule, total_steps=epochs * run.steps_per_epoch)
        if epoch % cfg.training.checkpoint_every == 0 or epoch == epochs:
            checkpoint.save_checkpoint(run_dir / "last", ema_pot, state, dict(prog))
        out.epoch(row, epochs)
        if logger:
            logger.log(row)
        patience = cfg.training.patience
        if patience is not None and prog["bad_epochs"] >= patience:
            stop_reason = f"no improvement in {patience} evaluations"
            break
        if budget is not None and elapsed() + row["epoch_time"] > budget:
            stop_reason = "time budget"
            break
    if stop_reason != "epochs" and prog["epoch"] % cfg.training.checkpoint_every:
        ema_pot = run.potential.with_params(state.ema)
        checkpoint.save_checkpoint(run_dir / "last", ema_pot, state, dict(prog))
    return _finish(run, run_dir, prog, stop_reason, logger, out)


def _finish(run: _Run, run_dir: Path, prog: dict, stop_reason: str, logger, out) -> TrainResult:
    best_dir = run_dir / "best"
    if not best_dir.exists():  # no validation ever ran: the last state is the best
        best_dir = run_dir / "last"
    best = Potential.load(best_dir)
    if run.cfg.loss.energy_weight == 0 and any(s.energy is not None for s in run.sets["train"]):
        best = run.refit_energy_shift(best)
        progress = json.loads((best_dir / checkpoint.PROGRESS_FILE).read_text())
        progress["energy_shift_refit"] = True
        checkpoint.save_checkpoint(run_dir / "best", best, None, progress)
    params = jax.tree.map(lambda x: jnp.asarray(x, run.dtype), best.params)
    summary: dict[str, Any] = {
        "stopped_by": stop_reason,
        "epochs": prog["epoch"],
        "steps": prog["step"],
        "best_epoch": prog["best_epoch"],
        "elapsed_s": prog["elapsed"],
        "compilations": dict(run.compilations),
        "n_structures": {k: len(v) for k, v in run.sets.items()},
    }
    for name in ("train", "validation", "test", "excluded"):
        if name in run.data:
            summary[name] = run.evaluate(params, name)
    _write_json(run_dir / SUMMARY_FILE, summary)
    out.message(
        f"stopped after {prog['epoch']} epochs ({stop_reason}), {prog['elapsed']:.0f} s; "
        f"compiled the training step {run.compilations['train']}× and the evaluation step "
        f"{run.compilations['eval']}×"
    )
    for name in ("validation", "test", "excluded"):
        if name in summary:
            figures = describe(summary[name])
            out.message(f"{name} (best model, epoch {prog['best_epoch']}): {figures}")
    out.message(
        f"best model saved in {run_dir / 'best'}; load it with jat.Potential.load({str(run_dir)!r})"
    )
    if logger:
        final = {
            f"{k}_{m}": v for k in ("validation", "test") for m, v in summary.get(k, {}).items()
        }
        logger.finish(final)
    return TrainResult(run_dir=run_dir, potential=best, summary=summary)
