"""Atomic replacement of whole directories (potentials, checkpoints).

A directory is written under a temporary name beside its target and swapped in only once it is
complete, so a crash at any point leaves either the previous complete version or the new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on normal exit it replaces ``target`` atomically.

    On an exception the temporary directory is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        _swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Move the complete directory ``tmp`` to ``target``, keeping the old one until the end."""
    if not target.exists():
        os.replace(tmp, target)
        return
    backup = target.with_name(f".{target.name}.old")
    if backup.exists():
        shutil.rmtree(backup)
    os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup)


def recover(target: str | os.PathLike) -> None:
    """Restore ``target`` from its backup if a crash happened between the two renames."""
    target = Path(target)
    backup = target.with_name(f".{target.name}.old")
    if backup.exists() and not target.exists():
        os.replace(backup, target)
