"""Crash-safe writes: whole directories (potentials, checkpoints) and small files.

A directory is written under a temporary name beside its target (``.<name>.tmp-*``), its files
and itself are fsynced, and it is swapped in with two renames: the old target goes to
``.<name>.old``, the new one takes its place, the backup is removed and the parent directory is
fsynced. A writer holds an advisory lock on the parent directory from the first temporary file to
the end of the swap, so :func:`recover`, which takes the same lock, only ever sees the leftovers of
writers that died. Whatever the moment of a crash, :func:`recover` then yields the previous
complete version or the new one, never a mixture, and removes the temporary directories.

Test hook: ``JAT_TEST_FAULT="POINT@N=ACTION[,...]"`` makes the N-th passage (counted from 1 in
this process) through the named :func:`fault_point` ``kill`` the process with SIGKILL, send it
``sigint``, or raise ``OSError`` with an errno name such as ``ENOSPC`` or ``EROFS``
(:func:`reset_fault_counts` restarts the counts). The writers
here pass ``write:<target name>:files`` (temporary copy complete), ``write:<name>:moved-aside``
(old target renamed to its backup, new one not yet in place) and ``write:<name>:swapped`` (new
one in place, backup not yet removed); the training loop adds points of its own. Unset, the hook
costs one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: writes stay atomic, only unlocked
    fcntl = None  # type: ignore[assignment]

FAULT_ENV = "JAT_TEST_FAULT"
TMP_TAG = ".tmp-"
BACKUP_SUFFIX = ".old"
#: a file's content, or an iterable of its pieces
FileData = bytes | str | Iterable[bytes | str]

_passages: dict[str, int] = {}
_held: dict[tuple[int, int], int] = {}  # directories this process has locked, with a count
_live: set[str] = set()  # temporary entries this process is writing now
_guard = threading.Lock()


def reset_fault_counts() -> None:
    """Start counting fault-point passages from zero again (for tests within one process)."""
    _passages.clear()


def fault_point(name: str) -> None:
    """Test hook (see the module docstring); does nothing unless ``$JAT_TEST_FAULT`` names
    ``name``."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    _passages[name] = _passages.get(name, 0) + 1
    for item in spec.split(","):
        point, _, rest = item.strip().partition("@")
        count, _, action = rest.partition("=")
        if point != name or not count.isdigit() or int(count) != _passages[name]:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        elif hasattr(errno, action):
            code = getattr(errno, action)
            raise OSError(code, f"{os.strerror(code)} (injected by {FAULT_ENV})")
        else:
            raise ValueError(f"{FAULT_ENV}: unknown action {action!r} in {item!r}")


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold the advisory write lock of ``directory`` (re-entrant within a process). Writers of
    entries in ``directory`` and :func:`recover` take it; file systems without ``flock`` (some
    network mounts) go unlocked."""
    directory = Path(directory)
    st = directory.stat()
    key = (st.st_dev, st.st_ino)
    with _guard:
        nested = key in _held
        _held[key] = _held.get(key, 0) + 1
    fd = None
    try:
        if not nested and fcntl is not None:
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock
        with _guard:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make the entries of ``directory`` (creations, renames) durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems do not sync directories
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for here, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(here, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(here)


def _refuse_non_directory(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"{target} is a file, not a directory; refusing to replace it "
            "(choose another path or remove the file)",
        )


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on normal exit it replaces ``target`` atomically.

    On an exception the temporary directory is removed and ``target`` is left untouched. A
    ``target`` that exists and is not a directory is refused (``NotADirectoryError``) before
    anything is written.
    """
    target = Path(target)
    _refuse_non_directory(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with directory_lock(target.parent):
        _recover_entry(target.parent, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_TAG}", dir=target.parent))
        _live.add(str(tmp))
        try:
            yield tmp
            _fsync_tree(tmp)
            fault_point(f"write:{target.name}:files")
            _swap_into_place(tmp, target)
        finally:
            _live.discard(str(tmp))
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Move the complete directory ``tmp`` to ``target``, keeping the old one until the end."""
    _refuse_non_directory(target)
    if not target.exists():
        os.replace(tmp, target)
        fsync_directory(target.parent)
        fault_point(f"write:{target.name}:swapped")
        return
    backup = target.with_name(f".{target.name}{BACKUP_SUFFIX}")
    if backup.exists():
        shutil.rmtree(backup)
    os.replace(target, backup)
    fault_point(f"write:{target.name}:moved-aside")
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(backup, target)
        raise
    fsync_directory(target.parent)
    fault_point(f"write:{target.name}:swapped")
    shutil.rmtree(backup)


def write_file(path: str | os.PathLike, data: FileData) -> None:
    """Replace the file ``path`` with ``data`` atomically and durably (temporary file, fsync,
    rename, fsync of the directory). ``data`` is the content, or an iterable of its pieces
    (written as they come, so a large file need not exist in memory at once)."""
    path = Path(path)
    with directory_lock(path.parent):
        tmp = _write_temporary(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_directory(path.parent)


def create_file(path: str | os.PathLike, data: FileData) -> None:
    """Create ``path`` with ``data`` only if it does not exist (``FileExistsError`` otherwise);
    the file appears complete or not at all, so it can serve as a claim marker."""
    path = Path(path)
    with directory_lock(path.parent):
        tmp = _write_temporary(path, data)
        try:
            os.link(tmp, path)  # atomic and exclusive, unlike a rename
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        fsync_directory(path.parent)


def _write_temporary(path: Path, data: FileData) -> str:
    """A fsynced temporary file beside ``path`` holding ``data`` (removed on failure)."""
    pieces = (data,) if isinstance(data, (bytes, str)) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for piece in pieces:
                fh.write(piece.encode() if isinstance(piece, str) else piece)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def recover(target: str | os.PathLike) -> None:
    """Bring ``target`` and the atomically written directories directly inside it (the ``best``
    and ``last`` checkpoints of a run directory) to a complete state after a writer died.

    A target missing beside its backup (the crash fell between the two renames) is restored from
    it; a backup beside a complete new target is removed; temporary files and directories of
    dead writers are removed. Call it before reading; it waits for a live writer's swap.
    """
    target = Path(target)
    if target.parent.is_dir():
        _recover_entry(target.parent, target.name)
    if target.is_dir():
        names = {
            _entry_name(entry.name)
            for entry in os.scandir(target)
            if entry.name.startswith(".") and _entry_name(entry.name)
        }
        for name in sorted(names):
            _recover_entry(target, name)


def _entry_name(hidden: str) -> str | None:
    """The entry a hidden backup or temporary name belongs to, or None."""
    if hidden.endswith(BACKUP_SUFFIX) and len(hidden) > len(BACKUP_SUFFIX) + 1:
        return hidden[1 : -len(BACKUP_SUFFIX)]
    head, tag, _ = hidden[1:].rpartition(TMP_TAG)
    return head if tag and head else None


def _recover_entry(parent: Path, name: str) -> None:
    target = parent / name
    backup = parent / f".{name}{BACKUP_SUFFIX}"
    temps = [p for p in parent.glob(f".{_glob_escape(name)}{TMP_TAG}*") if str(p) not in _live]
    if not temps and not backup.is_dir():
        return
    with directory_lock(parent):
        if backup.is_dir() and not backup.is_symlink():
            if not os.path.lexists(target):
                os.replace(backup, target)
                fsync_directory(parent)
            else:
                shutil.rmtree(backup, ignore_errors=True)
        for tmp in parent.glob(f".{_glob_escape(name)}{TMP_TAG}*"):
            if str(tmp) in _live:
                continue
            with contextlib.suppress(OSError):
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
