"""Process set-up for speed on Linux CPUs: transparent huge pages for XLA's buffers.

XLA:CPU takes the temporary buffers of a compiled call (hundreds of MB for a 225-atom box with
JAT 7 × 48: every activation kept for the backward pass) from ``malloc`` at every call, and glibc
serves allocations that large with a fresh ``mmap``. The kernel then zero-fills every 4 KiB page
on first touch, which on the 2-core test machine cost as much as the arithmetic: a bare
energy + forces call took 46 ms with 4 KiB pages and 24–31 ms when glibc asks for transparent
huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc ≥ 2.35, THP in ``madvise`` or
``always`` mode); inside a jitted MD loop the buffers are reused and it does not matter.

glibc reads its tunables only at start-up, so :func:`reexec_with_huge_pages` restarts the
current command with the tunable added. The command-line entry points (``python -m jat.train``,
the benchmarks and examples) call it first; a library import never does. Set ``JAT_HUGE_PAGES=0``
to opt out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


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


__all__ = ["huge_pages_available", "huge_pages_enabled", "reexec_with_huge_pages"]
