"""Ctrl-C and SIGTERM during training: a flag the loop checks, never an exception inside XLA.

Raising ``KeyboardInterrupt`` at an arbitrary moment can land inside a compilation or a
device transfer (and then crash the process). :func:`stop_on_signals` instead records the
first SIGINT or SIGTERM; the loop checks the flag between steps, epochs and set-up stages and
stops there cleanly, keeping its checkpoints. A second SIGINT raises ``KeyboardInterrupt`` at
once, as Python does by default.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class StopRequest:
    """Whether a stop was requested, and by which signal."""

    def __init__(self) -> None:
        self.signal: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, name: str) -> None:
        self.signal = name


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the yielded :class:`StopRequest` (main thread
    only; elsewhere the flag is never set and signals keep their handlers)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)
        # os.write, not print: a handler may run while the stream is in the middle of a write
        os.write(2, b"\nstopping after the current step (Ctrl-C again to stop at once)\n")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
