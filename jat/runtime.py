"""Process set-up for speed on Linux CPUs: freed memory kept for reuse, and huge pages.

XLA:CPU takes the temporary buffers of a compiled call (hundreds of MB for a 225-atom box with
JAT 7 × 48: every activation kept for the backward pass) from ``malloc`` at every call and frees
them after it. glibc serves allocations that large with a fresh ``mmap`` (from a worker thread's
arena, always: its heaps are at most 64 MiB) and unmaps them on ``free``, so the kernel
zero-fills every 4 KiB page again at every call: 21 869 page faults (85 MiB) per JAT energy +
forces call on that box, which on the 2-core test machine cost as much as the arithmetic.

:func:`keep_freed_memory`, applied when ``jat`` is imported, sets glibc's ``mallopt`` options so
that those buffers come from one heap that keeps freed memory (one arena, no ``mmap`` for large
blocks, no trimming below 2 GiB): the second and later calls of a compiled function reuse pages
that are already mapped, and take no page faults. The process's resident memory then stays at
its peak instead of falling back between calls. ``JAT_KEEP_FREED_MEMORY=0`` turns it off. It
works best when ``jat`` is imported before the first JAX computation (threads that already have
their own arena keep it).

glibc reads its tunables only at start-up, so :func:`reexec_with_huge_pages` restarts the
current command with transparent huge pages for malloc (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``,
glibc ≥ 2.35, THP in ``madvise`` or ``always`` mode), which also cuts the cost of the first touch.
The command-line entry points (``python -m jat.train``, the benchmarks and examples) call it
first; a library import never does. Set ``JAT_HUGE_PAGES=0`` to opt out.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP_BELOW = 2**31 - 1  # bytes of free memory at the top of the heap that are never returned
_kept: bool | None = None  # whether keep_freed_memory applied the options (None: not asked)
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module docstring): one arena,
    no ``mmap`` for large blocks, trimming only above 2 GiB free. Returns whether the options
    are in effect; does nothing (False) off Linux/glibc or with ``JAT_KEEP_FREED_MEMORY=0``.
    Idempotent; ``import jat`` calls it."""
    global _kept
    if _kept is not None:
        return _kept
    _kept = False
    if os.environ.get("JAT_KEEP_FREED_MEMORY", "1") == "0" or sys.platform != "linux":
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (AttributeError, OSError, ValueError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = [mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, KEEP_BELOW)]
    _kept = all(done)
    return _kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return bool(_kept)


def huge_pages_available() -> bool:
    """Linux with transparent huge pages in ``madvise`` or ``always`` mode."""
    if sys.platform != "linux":
        return False
    try:
        mode = THP.read_text()
    except OSError:
        return False
    return "[madvise]" in mode or "[always]" in mode


def huge_pages_enabled() -> bool:
    """This process was started with glibc's malloc asking for huge pages."""
    return "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", "")


def reexec_with_huge_pages() -> None:
    """Restart this Python command with ``GLIBC_TUNABLES`` asking for huge pages (once).

    Does nothing when it is already set, when THP is unavailable or off, off Linux, or with
    ``JAT_HUGE_PAGES=0``. Call it first thing in a ``__main__`` block, before any work.
    """
    if os.environ.get("JAT_HUGE_PAGES", "1") == "0" or huge_pages_enabled():
        return
    if not huge_pages_available():
        return
    current = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (current, TUNABLE) if t))
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


__all__ = [
    "freed_memory_kept",
    "huge_pages_available",
    "huge_pages_enabled",
    "keep_freed_memory",
    "reexec_with_huge_pages",
]
