"""``jat.runtime``: the entry points restart once with glibc asking for huge pages."""

from __future__ import annotations

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
