"""Why a training run cannot start, continue or finish; every message says what to do next.

``exit_code`` is what ``python -m jat.train`` returns for each: 2 when the run was refused as
asked (another run's directory, one in use, nothing to resume), 1 when it failed while running
(a write failed, a loss became non-finite), 0 for a run that is already complete.
"""

from __future__ import annotations

import os


class RunError(Exception):
    """A run that cannot start or continue; the message says why and what to do."""

    exit_code = 2


class RunExistsError(RunError, FileExistsError):
    """The run directory already holds another run (resume it instead)."""


class RunInUseError(RunError):
    """The run directory is locked by a training process that is still alive."""


class NotARunError(RunError, FileNotFoundError):
    """``--resume`` of a directory that holds no run to continue."""


class RunCompleteError(RunError):
    """``--resume`` of a run that already finished (its stop reason is in the message)."""

    exit_code = 0


class NonFiniteError(RunError, ArithmeticError):
    """A loss, gradient or evaluation became NaN or infinite; names the structures involved."""

    exit_code = 1


class RunWriteError(RunError, OSError):
    """Writing into the run directory failed (disk full, read-only, no permission).

    ``errno`` is the one of the underlying ``OSError``."""

    exit_code = 1

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0])


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on SIGINT (Ctrl-C) or SIGTERM; checkpoints are kept. ``run_dir`` is the
    run's directory and the message says how to resume it."""

    def __init__(self, message: str, run_dir: str | os.PathLike | None = None):
        super().__init__(message)
        self.run_dir = run_dir

    def __str__(self) -> str:
        return str(self.args[0])
