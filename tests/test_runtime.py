"""``jat.runtime``: freed memory kept for reuse at import, and the entry points restart once with
glibc asking for huge pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jat import runtime


class Exec(Exception):
    pass


@pytest.fixture
def execve(monkeypatch):
    calls = []

    def fake(path, argv, env):
        calls.append((path, argv, env))
        raise Exec

    monkeypatch.setattr(runtime.os, "execve", fake)
    monkeypatch.setattr(runtime, "huge_pages_available", lambda: True)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "jat.train", "x.yaml"])
    return calls


def test_restarts_once_with_the_tunable(execve, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.delenv("JAT_HUGE_PAGES", raising=False)
    with pytest.raises(Exec):
        runtime.reexec_with_huge_pages()
    path, argv, env = execve[0]
    assert path == sys.executable and argv == [sys.executable, "-m", "jat.train", "x.yaml"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])  # the restarted process
    assert runtime.huge_pages_enabled()
    runtime.reexec_with_huge_pages()  # no second restart
    assert len(execve) == 1


def test_opt_out_and_unavailable(execve, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("JAT_HUGE_PAGES", "0")
    runtime.reexec_with_huge_pages()
    monkeypatch.setenv("JAT_HUGE_PAGES", "1")
    monkeypatch.setattr(runtime, "huge_pages_available", lambda: False)
    runtime.reexec_with_huge_pages()
    assert execve == []


FAULTS_PER_CALL = """
import resource, sys
import jat  # first: it sets the allocator options
import jax, jax.numpy as jnp

f = jax.jit(lambda x: jnp.sin(x) * 2.0 + jnp.cos(x))  # a fresh 64 MiB output per call
x = jnp.ones((4096, 4096), jnp.float32)
rounds = []  # buffers are freed asynchronously: the heap grows until it holds the most alive
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        f(x).block_until_ready()
    rounds.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
faults = min(rounds)
print(jat.runtime.freed_memory_kept(), faults)
"""


def _faults_per_call(keep: str) -> tuple[bool, float]:
    env = dict(os.environ, JAT_KEEP_FREED_MEMORY=keep, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not (sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION")),
                    reason="glibc's mallopt options exist on Linux with glibc only")
def test_import_keeps_freed_memory_so_repeated_calls_take_no_page_faults():
    """A page fault is a page the kernel zero-fills: 16 384 per 64 MiB buffer mapped afresh."""
    kept, faults = _faults_per_call("1")
    off, faults_off = _faults_per_call("0")
    assert kept and not off
    assert faults_off > 8_000  # each call maps (and the kernel zero-fills) its output again
    assert faults < 0.05 * faults_off
