"""Data parallelism: each batch split by structure over the devices of one or more processes.

The D devices (``training.devices`` per process × the processes of
:mod:`jat.training.distributed`) form a one-axis :class:`jax.sharding.Mesh` (axis ``"data"``).
Parameters, optimiser state and EMA are replicated. A global batch of B structures
(``training.batch_size``, a multiple of D) is cut into D consecutive parts of B/D structures,
each a complete padded :class:`~jat.training.dataset.Batch` with its own (local) atom indices,
stacked on a leading device axis of length D; each process builds only its own devices' parts.
The steps run under :func:`jax.shard_map` and sum losses, counts and gradients over the devices
(:func:`jat.training.steps.sharded_train_step`), so a step is the global-batch step up to the
order of float additions. With D = 1 none of this is used (the single-device steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jat.training import steps
from jat.training.dataset import Batch, Bucket

AXIS = "data"


@dataclasses.dataclass(frozen=True, eq=False)
class DataParallel:
    """The mesh of the run's devices and the positions of this process's devices on its axis."""

    mesh: Mesh
    local_parts: tuple[int, ...]

    @property
    def size(self) -> int:
        """D, the number of devices sharing each batch."""
        return self.mesh.devices.size

    @property
    def sharded(self) -> NamedSharding:
        """Leading axis split over the devices."""
        return NamedSharding(self.mesh, P(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        """A full copy on every device."""
        return NamedSharding(self.mesh, P())


def resolve_devices(setting: str | int, batch_size: int, available: int, processes: int) -> int:
    """The devices per process for ``training.devices`` = ``setting`` (``"auto"``: all
    ``available``); raises ValueError naming the option when there are too few devices or when
    the global ``batch_size`` is not a multiple of the total device count."""
    if setting == "auto":
        n = available
    elif not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
        raise ValueError(f'training.devices must be "auto" or a number >= 1; got {setting!r}')
    elif setting > available:
        raise ValueError(
            f"training.devices = {setting}, but this process sees only {available} device(s) "
            f"({jax.default_backend()}); use training.devices=auto or at most {available}"
        )
    else:
        n = setting
    total = n * processes
    if batch_size % total:
        per = f"{n} per process × {processes} processes" if processes > 1 else f"{n}"
        raise ValueError(
            f"training.batch_size = {batch_size} (the global batch) is not a multiple of the "
            f"{total} devices (training.devices = {setting!r}: {per}); use a batch size "
            f"divisible by {total}, e.g. {batch_size + total - batch_size % total}"
        )
    return n


def data_parallel(setting: str | int, batch_size: int) -> DataParallel | None:
    """The mesh for ``training.devices`` = ``setting`` (the first N local devices of every
    process), or None when that is one device in one process (the single-device path)."""
    processes = jax.process_count()
    n = resolve_devices(setting, batch_size, jax.local_device_count(), processes)
    if n * processes == 1:
        return None
    chosen = []
    for p in range(processes):
        own = sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)
        chosen.extend(own[:n])
    me = jax.process_index()
    local = tuple(k for k, d in enumerate(chosen) if d.process_index == me)
    return DataParallel(Mesh(np.array(chosen), (AXIS,)), local)


def part_rows(rows: np.ndarray, size: int, parts: int, part: int) -> np.ndarray:
    """The rows of part ``part`` of ``parts`` of a batch of ``size`` slots holding ``rows``
    first (the later slots are fill); may be empty."""
    per = size // parts
    return np.asarray(rows)[part * per : (part + 1) * per]


def sharded_batch(dp: DataParallel, bucket: Bucket, rows: np.ndarray, size: int, dtype) -> Batch:
    """The global batch of ``size`` structures holding ``rows`` of ``bucket``: leaves (D, …),
    split over the devices; this process builds its own parts only, each on its own device
    (the host data goes straight to that device, and lists built with the batch are built
    there), and assembles them without a copy through the host. A part without real rows is
    a copy of the batch's first row with weight 0."""
    per = size // dp.size
    rows = np.asarray(rows)
    devices = dp.mesh.devices.reshape(-1)
    parts = []
    for k in dp.local_parts:
        own, device = part_rows(rows, size, dp.size, k), devices[k]
        with jax.default_device(device):
            part = bucket.batch(own if len(own) else rows[:1], per, dtype)
            if not len(own):
                part = without_weight(part)
            parts.append(jax.tree.map(lambda x, d=device: jax.device_put(x, d)[None], part))
    return jax.tree.map(
        lambda *x: jax.make_array_from_single_device_arrays(
            (dp.size, *x[0].shape[1:]), dp.sharded, list(x)
        ),
        *parts,
    )


def without_weight(batch: Batch) -> Batch:
    """``batch`` with every structure marked as fill (weight 0: no loss, no metric)."""
    zero = batch.weight * 0
    return dataclasses.replace(
        batch, weight=zero, energy_weight=zero, forces_weight=zero,
        property_weight={k: zero for k in batch.property_weight},
    )


def replicate(dp: DataParallel, tree: Any) -> Any:
    """``tree`` (the same values in every process) as arrays copied onto every device."""

    def put(x):
        if isinstance(x, jax.Array):
            if x.sharding == dp.replicated:
                return x
            x = x.addressable_data(0)  # a replicated array of another mesh: any copy
        return jax.make_array_from_process_local_data(dp.replicated, np.asarray(x))

    return jax.tree.map(put, tree)


def host_copy(tree: Any) -> Any:
    """A replicated ``tree`` as numpy arrays, read from this process's first copy (works when
    other processes hold the other copies)."""
    return jax.tree.map(
        lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree
    )


def compiled_train_step(
    dp: DataParallel, model, tx, spec: steps.LossSpec, ema_decay, on_trace=None
) -> Callable:
    """The sharded training step ``step(state, scale, batch, lr)``, jitted with the state
    donated; ``batch`` from :func:`sharded_batch`, the rest replicated. ``on_trace()`` runs
    once per trace (per batch shape)."""

    def local(state, scale, batch, lr):
        if on_trace is not None:
            on_trace()
        batch = jax.tree.map(lambda x: x[0], batch)
        return steps.sharded_train_step(model, tx, spec, ema_decay, AXIS, state, scale, batch, lr)

    mapped = jax.shard_map(
        local,
        mesh=dp.mesh,
        in_specs=(P(), P(), P(AXIS), P()),
        out_specs=(P(), P()),
        check_vma=False,
    )
    return jax.jit(mapped, donate_argnums=0)


def compiled_eval_step(
    dp: DataParallel, model, spec: steps.LossSpec, forces: bool, on_trace=None
) -> Callable:
    """The sharded evaluation step ``sums(params, scale, batch)`` (sums over all devices)."""

    def local(params, scale, batch):
        if on_trace is not None:
            on_trace()
        batch = jax.tree.map(lambda x: x[0], batch)
        return steps.sharded_eval_step(model, spec, forces, AXIS, params, scale, batch)

    mapped = jax.shard_map(
        local, mesh=dp.mesh, in_specs=(P(), P(), P(AXIS)), out_specs=P(), check_vma=False
    )
    return jax.jit(mapped)
