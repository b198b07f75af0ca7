"""The run directory: its layout, claiming and locking it, and every write into it.

Layout: ``config.yaml`` (resolved configuration, written first: it is the claim), ``split.json``,
``metrics.jsonl`` (one JSON row per epoch), ``last/`` and ``best/`` checkpoints
(:mod:`jat.training.checkpoint`), ``summary.json`` at the end, and ``.lock``.

A new run claims its directory atomically before any work: ``os.mkdir`` of a fresh directory (a
default name that is taken gets a ``-1``, ``-2``, … suffix), or an existing empty one, and then
creates ``config.yaml`` exclusively (``os.link``). While the run is alive it holds an ``flock`` on
``.lock``; the kernel drops it when the process dies, however it dies, so a second run, or a
``--resume`` of a run that is still alive, is refused instead of writing into the same files.
Writes that fail (disk full, read-only) raise :class:`~jat.training.errors.RunWriteError` saying
what is intact and how to resume.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import os
import shlex
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from jat.atomic_io import (
    BACKUP_SUFFIX,
    create_file,
    fault_point,
    recover,
    write_file,
)
from jat.training import checkpoint
from jat.training.errors import (
    NotARunError,
    RunError,
    RunExistsError,
    RunInUseError,
    RunWriteError,
)
from jat.training.state import RunProgress

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are claimed but not locked
    fcntl = None  # type: ignore[assignment]

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
CHECKPOINTS = ("last", "best")
RUN_FILES = (CONFIG_FILE, SPLIT_FILE, METRICS_FILE, SUMMARY_FILE)


def resume_command(path: str | os.PathLike) -> str:
    """The shell command that resumes the run in ``path`` (absolute, quoted)."""
    return f"python -m jat.train --resume {shlex.quote(os.path.abspath(path))}"


def holds_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds (part of) a run, as opposed to nothing or unrelated files."""
    path = Path(path)
    names = (*RUN_FILES, *CHECKPOINTS, *(f".{c}{BACKUP_SUFFIX}" for c in CHECKPOINTS))
    return any(os.path.lexists(path / name) for name in names)


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``, up to the first one a crash cut short."""
    rows = []
    path = Path(path)
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class RunDirectory:
    """A run directory this process has claimed or opened, and holds the lock of.

    Use :meth:`claim` for a new run and :meth:`open` to resume one; :meth:`release` (or leaving
    the ``with`` block) drops the lock. :meth:`follow` is the view of the other processes of a
    multi-process run (``writes`` False): they read, and their writes do nothing.
    """

    def __init__(self, path: Path, lock_fd: int | None, created: bool = False, writes: bool = True):
        self.path = path
        self._lock_fd = lock_fd
        self._created = created
        self.writes = writes

    # -- claiming ------------------------------------------------------------------------------

    @classmethod
    def claim(
        cls, run_dir: str | None, output_dir: str | os.PathLike, name: str, config_text: str
    ) -> RunDirectory:
        """Claim ``run_dir`` (must be new or empty), or else a new ``<output_dir>/<name>-<date>-
        <time>`` directory, and write ``config_text`` as its ``config.yaml``."""
        if run_dir is not None:
            return cls._claim(Path(run_dir), config_text)
        parent = Path(output_dir)
        with _writes(parent, "the run had not started"):
            parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for k in itertools.count():
            path = parent / (f"{name}-{stamp}" if k == 0 else f"{name}-{stamp}-{k}")
            try:
                return cls._claim(path, config_text)
            except (RunExistsError, RunInUseError):
                continue
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _claim(cls, path: Path, config_text: str) -> RunDirectory:
        created = False
        with _writes(path, "the run had not started"):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(path)
                created = True
            except FileExistsError:
                if not path.is_dir():
                    raise RunExistsError(
                        f"{path} exists and is not a directory; choose another run_dir"
                    ) from None
        fd = _lock(path)
        try:
            recover(path)
            if holds_run(path):
                raise RunExistsError(_occupied_message(path))
            with _writes(path / CONFIG_FILE, "the run had not started"):
                try:
                    create_file(path / CONFIG_FILE, config_text)
                except FileExistsError:
                    raise RunExistsError(_occupied_message(path)) from None
        except BaseException:
            _unlock(fd)
            raise
        fault_point("run:claimed")
        return cls(path, fd, created)

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDirectory:
        """Open the run in ``path`` to resume it: lock it, recover its checkpoints after a crash
        and check it holds a configuration."""
        path = Path(path)
        if not path.is_dir():
            raise NotARunError(f"{path}: no such run directory")
        fd = _lock(path)
        try:
            with _writes(path, f"nothing in {path} was changed"):
                recover(path)
            if not (path / CONFIG_FILE).is_file():
                if holds_run(path):
                    raise NotARunError(_occupied_message(path))
                raise NotARunError(
                    f"{path} holds no run to resume (no {CONFIG_FILE}: none was started there, "
                    "or it was killed before writing its configuration); start one with "
                    f"`python -m jat.train [CONFIG.yaml] run_dir={shlex.quote(str(path))}`"
                )
        except BaseException:
            _unlock(fd)
            raise
        return cls(path, fd)

    @classmethod
    def follow(cls, path: str | os.PathLike) -> RunDirectory:
        """The run in ``path`` that process 0 of the same run has claimed or opened: read
        here, written only by process 0 (writes here do nothing; no lock is taken)."""
        return cls(Path(path), None, writes=False)

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        fd, self._lock_fd = self._lock_fd, None
        _unlock(fd)

    def abandon_if_untrained(self) -> None:
        """Undo the claim of a new run that failed before training anything (no checkpoint, no
        metrics), so that the same command can simply be run again; releases the lock."""
        if not self.writes:
            return
        if any(self.has_checkpoint(c) for c in CHECKPOINTS) or read_rows(self.path / METRICS_FILE):
            return
        with contextlib.suppress(OSError):
            recover(self.path)
            for name in (CONFIG_FILE, SPLIT_FILE, METRICS_FILE):
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
            if self._created:  # a directory that existed keeps its lock file
                (self.path / LOCK_FILE).unlink()
                self.release()
                self.path.rmdir()
        self.release()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- reading -------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def has(self, name: str) -> bool:
        """Whether the file or checkpoint ``name`` exists (after recovery)."""
        return (self.path / name).exists()

    def has_checkpoint(self, name: str) -> bool:
        return (self.path / name / checkpoint.PROGRESS_FILE).is_file()

    def read_progress(self, name: str) -> RunProgress:
        return checkpoint.read_progress(self.path / name)

    def load_checkpoint(self, name: str, template: Any) -> tuple[Any, RunProgress]:
        return checkpoint.load_checkpoint(self.path / name, template)

    def status(self) -> str:
        """What survives in this directory: the last checkpoint's epoch, or none."""
        try:
            epoch = self.read_progress("last").epoch if self.has_checkpoint("last") else None
        except (OSError, ValueError):
            epoch = None
        if epoch is None:
            return "no checkpoint was written yet"
        return f"the checkpoint of epoch {epoch} in {os.path.abspath(self.path / 'last')} is intact"

    def resume_hint(self) -> str:
        """What is intact and the exact command that resumes the run."""
        command = resume_command(self.path)
        status = self.status()
        if status.startswith("no checkpoint"):
            return f"{status}; `{command}` starts the run again from the beginning"
        return f"{status}; resume with `{command}`"

    # -- writing -------------------------------------------------------------------------------

    def save_checkpoint(
        self, name: str, potential: Any, state: Any | None, progress: RunProgress
    ) -> None:
        if not self.writes:
            return
        with self._writing(self.path / name):
            checkpoint.save_checkpoint(self.path / name, potential, state, progress)

    def write_json(self, name: str, obj: Any) -> None:
        if not self.writes:
            return
        with self._writing(self.path / name):
            write_file(self.path / name, json.dumps(obj, indent=1) + "\n")

    def write_text(self, name: str, pieces: Iterable[str]) -> None:
        """Replace the file ``name`` with the concatenated ``pieces``, written as they come."""
        if not self.writes:
            return
        with self._writing(self.path / name):
            write_file(self.path / name, pieces)

    def append_row(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics to ``metrics.jsonl`` (flushed and fsynced)."""
        if not self.writes:
            return
        path = self.path / METRICS_FILE
        with self._writing(path), path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        fault_point("run:row")

    def reset_rows(self, last_epoch: int) -> list[dict[str, Any]]:
        """Keep the metric rows up to ``last_epoch`` (those written after the checkpoint go)."""
        path = self.path / METRICS_FILE
        rows = [r for r in read_rows(path) if r.get("epoch", math.inf) <= last_epoch]
        if not self.writes:
            return rows
        with self._writing(path):
            write_file(path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    @contextlib.contextmanager
    def _writing(self, what: Path) -> Iterator[None]:
        try:
            yield
        except RunError:
            raise
        except OSError as err:
            raise _write_error(what, err, self.resume_hint()) from err


# ---------------------------------------------------------------------------------------------


def _occupied_message(path: Path) -> str:
    if (path / CONFIG_FILE).is_file():
        return (
            f"{path} already holds a run; resume it with `{resume_command(path)}` or choose "
            "another run_dir"
        )
    return (
        f"{path} holds files of a run but no {CONFIG_FILE}, so it can be neither reused nor "
        "resumed; choose another run_dir or remove it"
    )


def _lock(path: Path) -> int | None:
    """Open and ``flock`` the run's lock file without waiting; write our pid into it."""
    if fcntl is None:  # pragma: no cover
        return None
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        writable = True
    except OSError as err:
        if not lock.is_file():
            raise _write_error(lock, err, f"nothing in {path} was changed") from err
        fd = os.open(lock, os.O_RDONLY)
        writable = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.pread(fd, 32, 0).decode().strip() or "?"
        finally:
            os.close(fd)
        raise RunInUseError(
            f"{path} is in use by a training process that is still running (pid {pid}); wait "
            "for it to end or stop it (Ctrl-C keeps its checkpoints), then "
            f"`{resume_command(path)}`"
        ) from None
    if writable:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def _write_error(what: Path, err: OSError, status: str) -> RunWriteError:
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        advice = "free some disk space"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "make the directory writable"
    else:
        advice = "fix the cause"
    message = f"cannot write {what}: {reason} ({advice}). Nothing is lost: {status}"
    return RunWriteError(message, err.errno)


@contextlib.contextmanager
def _writes(what: Path, status: str) -> Iterator[None]:
    try:
        yield
    except RunError:
        raise
    except OSError as err:
        if isinstance(err, FileExistsError):
            raise
        raise _write_error(what, err, status) from err
