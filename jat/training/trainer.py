"""The compiled pieces of one run: data as buckets, the model, the steps, one epoch, evaluation.

:class:`Trainer` does the work that touches the device; the epoch loop, checkpoints and the
run directory are :mod:`jat.training.loop`'s. Nothing here waits for the device within an
epoch: each step's loss terms and finiteness flag are gathered at the epoch's end, where a
non-finite step raises :class:`~jat.training.errors.NonFiniteError` naming its structures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jat import properties
from jat.atomic_io import fault_point
from jat.config import PER_BATCH_FROM, Config
from jat.dtypes import cast, precision
from jat.potential import Potential
from jat.training import distributed, optim, parallel, steps
from jat.training.data import load_splits, repulsion_spec, species_of
from jat.training.dataset import (
    Dataset,
    align_edge_slots,
    build_dataset,
    check_graph_errors,
    choose_buckets,
)
from jat.training.errors import NonFiniteError, TrainingInterrupted
from jat.training.interrupts import StopRequest
from jat.training.prefetch import prefetched
from jat.training.progress import Progress
from jat.training.rundir import RunDirectory
from jat.training.splits import SETS, fit_energy_reference
from jat.uncertainty import label_statistics

NAMED_STRUCTURES = 8  # structures an error message lists before "and N more"


def name_structures(sources: list[str]) -> str:
    """``a, b, c`` or ``a, b, … and N more``."""
    head = ", ".join(sources[:NAMED_STRUCTURES])
    more = len(sources) - NAMED_STRUCTURES
    return f"{head} and {more} more" if more > 0 else head


class Trainer:
    """State and compiled functions of one training run."""

    def __init__(
        self,
        cfg: Config,
        run: RunDirectory,
        progress: Progress,
        hooks: dict[str, Callable],
        stop: StopRequest,
    ):
        self.cfg = cfg
        self.run = run
        self.out = progress
        self.hooks = hooks
        self.stop = stop
        self.t0 = time.monotonic()
        self.loss_spec = steps.LossSpec(
            forces_weight=cfg.loss.forces_weight,
            energy_weight=cfg.loss.energy_weight,
            forces_alpha=cfg.loss.forces_alpha,
            energy_alpha=cfg.loss.energy_alpha,
        )
        ensemble = cfg.model.ensemble
        #: a shallow ensemble: one parameter set with K heads, trained with loss.ensemble
        self.shallow = ensemble.kind == "shallow" and ensemble.members > 1
        if self.shallow:
            self.loss_spec = dataclasses.replace(
                self.loss_spec,
                ensemble=cfg.loss.ensemble,
                ensemble_weight=cfg.loss.ensemble_weight,
            )
        self.compilations = {"train": 0, "eval": 0}
        #: several processes step together: a stop request waits for the epoch's end
        self.lockstep = distributed.several()
        #: the device mesh when batches are split over several devices, else None
        self.dp = parallel.data_parallel(cfg.training.devices, cfg.training.batch_size)

    def check_stop(self, where: str) -> None:
        """Raise :class:`TrainingInterrupted` if SIGINT/SIGTERM arrived (see ``interrupts``)."""
        if self.stop.requested:
            raise TrainingInterrupted(
                f"interrupted ({self.stop.signal}) {where}; {self.run.resume_hint()}",
                self.run.path,
            )

    # -- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        """Read and split the data, fit the energy reference, create the model, pad the data into
        buckets and prepare the compiled steps."""
        cfg = self.cfg
        self.sets = load_splits(cfg)
        fault_point("train:setup")
        self.check_stop("while reading the data")
        train = self.sets["train"]
        need_forces = cfg.loss.forces_weight > 0
        if need_forces and not any(s.forces is not None for s in train):
            raise ValueError(
                "the training data has no forces; set loss.forces_weight=0 and "
                "loss.energy_weight>0 to train on energies"
            )
        if cfg.loss.energy_weight > 0 and not any(s.energy is not None for s in train):
            raise ValueError("the training data has no energies; set loss.energy_weight=0")
        self.species = species_of(cfg, self.sets)
        n_channels = self._property_targets(train)
        ensemble = cfg.model.ensemble
        self.members = ensemble.members if ensemble.members > 1 else None
        if self.members and self.dp is not None:
            raise ValueError(
                f"model.ensemble.members={self.members} and training.devices="
                f"{cfg.training.devices} ({self.dp.size} devices): a committee trains on one "
                "device so far; set training.devices=1"
            )
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
            repulsion=repulsion_spec(cfg, train, self.species),
            members=self.members,
            ensemble=ensemble.kind,
            **({"property_outputs": n_channels} if n_channels else {}),
            **dict(cfg.model.hyper),
        ).with_energy_reference(shift=shift, scale=np.full(len(self.species), scale))
        self.potential = self.potential.with_properties(self.targets)
        # the training labels' distribution, gathered in one pass, for z-scores of predictions
        self.potential = self.potential.with_label_statistics(
            label_statistics(train, shift, self.species)
        )
        self.check_stop("while creating the model")
        sizes = np.concatenate([structures.n_atoms for structures in self.sets.values()])
        bounds = choose_buckets(sizes, cfg.training.max_buckets)
        lists = cfg.training.neighbor_lists
        if lists == "auto":
            lists = "per_batch" if len(sizes) >= PER_BATCH_FROM else "stored"
        self.data: dict[str, Dataset] = align_edge_slots(
            {
                name: build_dataset(
                    self.sets[name], self.species, cfg.model.cutoff, shift, bounds, self.targets,
                    neighbor_lists=lists, dtype=cfg.model.dtype,
                )
                for name in SETS
                if self.sets[name]
            }
        )
        self.check_stop("while building neighbour lists")
        self.dtype = jnp.dtype(cfg.model.dtype)
        self.eval_forces = any(s.forces is not None for s in train)
        self.batch = cfg.training.batch_size
        self.eval_batch = cfg.training.eval_batch_size or self.batch
        if self.dp is not None:  # evaluation sums do not depend on the batch size
            self.eval_batch = -(-self.eval_batch // self.dp.size) * self.dp.size
        self.steps_per_epoch = len(self.data["train"].batches(self.batch))
        self.tx = optim.optimizer(
            cfg.optimizer.name, cfg.optimizer.weight_decay, cfg.optimizer.clip_norm
        )
        self.member_weights = self._member_weights(ensemble.bootstrap)
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
        if self.targets:
            described = ", ".join(
                f"{t.key} ({t.kind}, "
                + ("the dipole head" if t.channel == properties.HEAD else f"channel {t.channel}")
                + (f", mean {t.offset:.4g}" if t.kind == "intensive" else "")
                + f", scale {t.scale:.4g})"
                for t in self.targets
            )
            self.out.message(f"property targets: {described}")
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
        committee = ""
        if self.shallow:
            committee = (
                f", a shallow ensemble of {self.members} readout heads trained with "
                f"{cfg.loss.ensemble}"
            )
        elif self.members:
            committee = (
                f", a committee of {self.members}"
                + (" (bootstrap resamples)" if ensemble.bootstrap else "")
                + f": {n_params // self.members} parameters each"
            )
        self.out.message(
            f"model: {cfg.model.name} ({n_params} parameters{committee}), run dir {self.run.path}"
        )

    def _property_targets(self, train: list) -> int:
        """The targets of ``loss.properties`` with their normalisation fitted on ``train``
        (``self.targets``, and their terms in the loss spec); returns P, the property channels
        the network needs. A target that no training structure has is an error naming it."""
        cfg = self.cfg
        entries = [(t.key, t.kind) for t in cfg.loss.properties]
        dipole_head = bool(dict(cfg.model.hyper).get("dipole_head", False))
        targets, n_channels = properties.assign_channels(entries, dipole_head)
        fitted = []
        for k, t in enumerate(targets):
            try:
                fitted.append(properties.fit_target(t, train, self.species))
            except ValueError as err:
                raise ValueError(f"loss.properties.{k} (key {t.key!r}): {err}") from None
        self.targets = tuple(fitted)
        terms = tuple(
            steps.PropertyTerm(t, c.weight, c.alpha)
            for t, c in zip(self.targets, cfg.loss.properties, strict=True)
        )
        self.loss_spec = dataclasses.replace(self.loss_spec, properties=terms)
        return n_channels

    def _member_weights(self, bootstrap: bool) -> list[np.ndarray] | None:
        """Per training bucket, (K, rows) weights of each member's structures: ones, or the
        counts of a bootstrap resample of the training set drawn once from the seed (None for a
        single model or a shallow ensemble, whose heads share one parameter set)."""
        if not self.potential.stacked:
            return None
        train = self.data["train"]
        n = len(train)
        if bootstrap:
            rng = np.random.default_rng([self.cfg.seed, 0xB007])
            counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                               for _ in range(self.members)]).astype(np.float64)
        else:
            counts = np.ones((self.members, n))
        return [counts[:, bucket.index] for bucket in train.buckets]

    def _compile(self) -> None:
        model = self.potential.energy_model

        def counter(kind: str) -> Callable[[], None]:
            def traced() -> None:  # runs once per trace, i.e. per shape
                self.compilations[kind] += 1

            return traced

        committee = self.potential.stacked
        self.scale = jnp.asarray(self.potential.energy_scale, self.dtype)
        if self.dp is not None:
            self.train_step = parallel.compiled_train_step(
                self.dp,
                model,
                self.tx,
                self.loss_spec,
                self.cfg.optimizer.ema_decay,
                counter("train"),
            )
            self.eval_step = parallel.compiled_eval_step(
                self.dp, model, self.loss_spec, self.eval_forces, counter("eval")
            )
            self.scale = parallel.replicate(self.dp, self.scale)
            return
        self.train_step = steps.compiled_train_step(
            model, self.tx, self.loss_spec, self.cfg.optimizer.ema_decay, counter("train"),
            committee=committee,
        )
        count_eval = counter("eval")

        def eval_step(params, scale, batch):
            count_eval()
            return steps.eval_step(
                model, self.loss_spec, self.eval_forces, params, scale, batch, committee
            )

        self.eval_step = jax.jit(eval_step)

    def initial_state(self) -> steps.TrainState:
        return self.place(
            steps.initial_state(self.potential.params, self.tx, self.potential.stacked)
        )

    def step(self, state: steps.TrainState, bucket: int, rows: np.ndarray, batch, lr):
        """One compiled training step on ``batch`` (rows ``rows`` of training bucket
        ``bucket``); a committee's members weight its structures by their own weights."""
        if not self.potential.stacked:
            return self.train_step(state, self.scale, batch, lr)
        weights = np.zeros((self.members, self.batch))
        weights[:, : len(rows)] = self.member_weights[bucket][:, rows]
        return self.train_step(state, self.scale, batch, lr, jnp.asarray(weights, self.dtype))

    def place(self, tree: Any) -> Any:
        """``tree`` (a state or parameters) where the steps take it: replicated over the
        devices when several share each batch, else unchanged."""
        return tree if self.dp is None else parallel.replicate(self.dp, tree)

    def host(self, tree: Any) -> Any:
        """``tree`` (a state, parameters or metrics) readable on the host, e.g. to save it."""
        return tree if self.dp is None else parallel.host_copy(tree)

    def make_batch(self, data: Dataset, b: int, rows: np.ndarray, size: int) -> Any:
        """The batch of ``size`` slots holding ``rows`` of bucket ``b`` of ``data``, as the
        steps take it (split over the devices when there are several)."""
        bucket = data.buckets[b]
        if self.dp is None:
            return bucket.batch(rows, size, self.dtype)
        return parallel.sharded_batch(self.dp, bucket, rows, size, self.dtype)

    def batches_of(
        self, data: Dataset, batches: list[tuple[int, np.ndarray]], size: int
    ) -> contextlib.closing[Iterator[Any]]:
        """The batches (bucket, rows) of ``data`` as :meth:`make_batch` makes them, in order,
        made ``training.prefetch`` ahead in a background thread; use in a ``with`` block, so
        that the thread stops when the loop over them ends or raises. The batches are made
        in the run's precision (``jax.enable_x64`` is a per-thread setting)."""

        def make(entry: tuple[int, np.ndarray]) -> Any:
            with precision(self.cfg.model.dtype):
                return self.make_batch(data, *entry, size)

        return contextlib.closing(prefetched(make, batches, self.cfg.training.prefetch))

    def measure_epoch(self, state: steps.TrainState) -> float:
        """Seconds an epoch (with its share of validation) takes, from compiled steps of every
        bucket timed on a throwaway copy of ``state``; compiles every shape on the way."""
        train = self.data["train"]
        per_epoch = 0.0
        for b, bucket in enumerate(train.buckets):
            n_batches = sum(1 for k, _ in train.batches(self.batch) if k == b)
            batch = self.make_batch(train, b, np.arange(min(self.batch, len(bucket))), self.batch)
            scratch = jax.tree.map(jnp.copy, state)
            times = []
            rows = np.arange(min(self.batch, len(bucket)))
            for _ in range(3):
                t = time.perf_counter()
                scratch, m = self.step(scratch, b, rows, batch, np.float32(1e-12))
                jax.block_until_ready(m)
                times.append(time.perf_counter() - t)
                self.check_stop("while timing the training step")
            per_epoch += n_batches * min(times[1:])
        if "validation" in self.data:
            self.evaluate(state.ema, "validation")  # compiles
            t = time.perf_counter()
            self.evaluate(state.ema, "validation")
            per_epoch += (time.perf_counter() - t) / self.cfg.training.eval_every
        return per_epoch

    # -- epochs -------------------------------------------------------------------------------

    def _sources(self, data: Dataset, b: int, rows: np.ndarray) -> list[str]:
        return [data.structures[i].source for i in data.buckets[b].index[rows]]

    def evaluate(self, params: Any, name: str) -> dict[str, float]:
        """Error figures of data set ``name`` (empty if the run has none); raises
        :class:`NonFiniteError` naming the structures of a batch whose sums are not finite."""
        data = self.data.get(name)
        if data is None:
            return {}
        batches = data.batches(self.eval_batch)
        params = self.place(params)
        sums, graph_errors = [], []
        with self.batches_of(data, batches, self.eval_batch) as made:
            for batch in made:
                sums.append(self.eval_step(params, self.scale, batch))
                graph_errors.append(batch.graph_error)
        host = jax.device_get(self.host(sums))
        check_graph_errors(
            [local_values(e) for e in graph_errors],
            lambda k: name_structures(self._sources(data, *batches[k])),
        )
        for (b, rows), part in zip(batches, host, strict=True):
            if not all(np.isfinite(v) for v in part.values()):
                raise NonFiniteError(
                    f"the {name} errors are not finite (NaN or inf) for the batch of "
                    f"{name_structures(self._sources(data, b, rows))}; check these structures "
                    f"(e.g. overlapping atoms); {self.run.status()}"
                )
        return steps.reduce_sums(host, self.loss_spec)

    def run_epoch(
        self,
        state: steps.TrainState,
        epoch: int,
        epochs: int,
        step: int,
        schedule: optim.Schedule,
    ) -> tuple[steps.TrainState, dict[str, Any]]:
        """One pass over the shuffled training set from host step counter ``step``; nothing
        waits for the device until the epoch's metrics are gathered at the end."""
        train = self.data["train"]
        rng = np.random.default_rng([self.cfg.seed, epoch])
        parts, graph_errors = [], []
        batches = train.batches(self.batch, rng)
        rates = schedule.values(step, len(batches))
        t = time.perf_counter()
        with self.batches_of(train, batches, self.batch) as made:
            for k, ((b, rows), batch) in enumerate(zip(batches, made, strict=True)):
                if not self.lockstep:
                    self.check_stop(f"during epoch {epoch}, which is discarded")
                state, metrics = self.step(state, b, rows, batch, rates[k])
                parts.append(metrics)
                graph_errors.append(batch.graph_error)
                if "after_step" in self.hooks:
                    self.hooks["after_step"](epoch, k, state)
                fault_point("train:step")
                self.out.step(epoch, epochs, k + 1, len(batches))
        host = jax.device_get(self.host(parts))  # waits for the epoch's last step
        check_graph_errors(
            [local_values(e) for e in graph_errors],
            lambda k: name_structures(self._sources(train, *batches[k])),
        )
        finite = [bool(part.pop("finite")) for part in host]
        if not all(finite):
            k = finite.index(False)
            b, rows = batches[k]
            loss = float(host[k]["loss"])
            what = (
                f"the loss became {'NaN' if math.isnan(loss) else 'infinite'}"
                if not math.isfinite(loss)
                else "the gradient became NaN or infinite"
            )
            raise NonFiniteError(
                f"{what} at epoch {epoch}, step {k + 1} of {len(batches)}, on the training batch "
                f"of {name_structures(self._sources(train, b, rows))}. Training stopped there "
                "and nothing of this epoch was saved; check these structures (overlapping "
                "atoms, wrong labels or units) or lower optimizer.lr_max (resuming would repeat "
                f"the same step); {self.run.status()}"
            )
        sums = steps.reduce_sums(host)
        seconds = time.perf_counter() - t
        row = {
            "epoch": epoch,
            "step": step + len(batches),
            "lr": float(rates[-1]),
            "train_loss": sums.get("loss", math.nan),
            **{f"train_{k}": v for k, v in sums.items() if k.startswith("loss_")},
            "train_structures_per_s": len(train) / seconds,
            "train_atoms_per_s": train.n_atoms / seconds,
            "train_time": seconds,
        }
        return state, row

    def refit_energy_shift(self, potential: Potential) -> Potential:
        """After training on forces only, re-fit μ_Z to the trained network: least squares of
        the training residuals E_ref − Σ μ_Z − E_net on element counts. The data sets' targets
        move with it, so energy errors measure the network, not an arbitrary offset."""
        train = self.data["train"]
        params = cast(potential.params, self.cfg.model.dtype)
        predict = jax.jit(functools.partial(
            steps.predict, potential.energy_model, forces=False, committee=potential.stacked
        ))
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
        shift = self.potential.energy_shift + delta
        stats = label_statistics(self.sets["train"], shift, self.species)
        return potential.with_energy_reference(shift=shift).with_label_statistics(stats)

    def monitor_key(self) -> str:
        """The validation figure that decides the best epoch."""
        return monitor_key(self.cfg)


def local_values(x: jax.Array | None) -> np.ndarray | None:
    """The values of ``x`` this process holds (all its shards, flattened), or None."""
    if x is None:
        return None
    return np.concatenate([np.asarray(s.data).reshape(-1) for s in x.addressable_shards])


def monitor_key(cfg: Config) -> str:
    """The validation figure that decides the best epoch of a run of ``cfg``: a key of the
    evaluation figures (``forces_mae``, ``energy_atom_mae`` or ``loss``; per-epoch metric rows
    hold it as ``val_<key>``), or a property target's ``<key>_mae``)."""
    monitor = cfg.training.monitor
    if monitor == "auto":
        trained = [t.key for t in cfg.loss.properties if t.weight > 0]
        if cfg.loss.forces_weight > 0:
            monitor = "forces_mae"
        elif cfg.loss.energy_weight > 0 or not trained:
            monitor = "energy_mae"
        else:
            monitor = f"{trained[0]}_mae"
    return {"energy_mae": "energy_atom_mae"}.get(monitor, monitor)
