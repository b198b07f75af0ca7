"""Several training processes (hosts) as one run, through :func:`jax.distributed.initialize`.

Every process runs the same command. Process 0 (the leader) claims or opens the shared run
directory and alone writes into it (checkpoints, metrics, summary, wandb); it tells the others
the directory or its error (:func:`share_outcome`), and they follow it read-only. The
coordination service checks the processes' heartbeats: when one dies, the others are stopped
within :data:`HEARTBEAT_TIMEOUT` seconds instead of waiting forever, and a process that cannot
reach the coordinator gives up after :data:`INIT_TIMEOUT` seconds.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jat.training.errors import RunError

INIT_TIMEOUT = 300  # s: waiting for every process to join
HEARTBEAT_TIMEOUT = 60  # s: a process silent this long is taken for dead; the others stop
MESSAGE_BYTES = 8192  # the longest message process 0 can send the others
#: Environment variables by which jax's cluster detection knows a multi-process launch.
CLUSTER_SIZE_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def cluster_launch(environ: dict[str, str] | None = None) -> bool:
    """Whether a cluster launcher (SLURM ``srun``, Open MPI ``mpirun``) started several tasks."""
    env = os.environ if environ is None else environ
    for name in CLUSTER_SIZE_VARIABLES:
        try:
            if int(env.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join the processes of a run: with ``coordinator`` (``HOST:PORT`` of process 0),
    ``num_processes`` and ``process_id`` as given, or, when none is given and a cluster launcher
    started several tasks, as jax detects them (SLURM, Open MPI). Returns whether several
    processes were joined; must run before any JAX computation."""
    given = (coordinator, num_processes, process_id)
    if all(v is None for v in given):
        if not cluster_launch():
            return False
        jax.distributed.initialize(
            initialization_timeout=INIT_TIMEOUT, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT
        )
        return True
    if any(v is None for v in given):
        raise ValueError("--coordinator, --num-processes and --process-id go together")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id {process_id} must be in 0…{num_processes - 1} (--num-processes "
            f"{num_processes})"
        )
    if num_processes == 1:
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=INIT_TIMEOUT,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT,
    )
    return True


def is_leader() -> bool:
    """Whether this is process 0, the one that writes the run directory."""
    return jax.process_index() == 0


def several() -> bool:
    """Whether this run has more than one process (false, without starting JAX's backend, when
    :func:`initialize` joined none)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def broadcast_text(text: str) -> str:
    """Process 0's ``text`` in every process (a collective: every process must call it)."""
    from jax.experimental import multihost_utils

    data = text.encode()[:MESSAGE_BYTES]
    buf = np.zeros(MESSAGE_BYTES + 1, np.uint8)
    buf[0 : len(data)] = np.frombuffer(data, np.uint8)
    out = multihost_utils.broadcast_one_to_all(buf, is_source=is_leader())
    return bytes(np.asarray(out, np.uint8)).rstrip(b"\0").decode(errors="replace")


def share_outcome(error: BaseException | None, value: str) -> str:
    """Tell every process what process 0 did: ``value`` if it succeeded; if it raised
    ``error``, the others raise :class:`~jat.training.errors.RunError` with its message and
    process 0 re-raises its own."""
    message = broadcast_text("ok:" + value if error is None else f"error:{error}")
    kind, _, body = message.partition(":")
    if kind == "ok":
        return body
    if error is not None:
        raise error
    raise RunError(f"process 0 failed: {body}")


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true in any process (a collective: every process must call it)."""
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([int(flag)], np.int32))))


def barrier(name: str) -> None:
    """Wait until every process reaches ``barrier(name)``."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
