"""Batches made ahead of the step that takes them, in a background thread.

A training step is dispatched without waiting for the device, so the loop could already gather
the next batch while the device computes; :func:`prefetched` also takes that gather (numpy
indexing, padding) and the batch's transfer to the device off the loop's thread, so that they
overlap the dispatch and the computation of the steps before it. Order, values and errors are
those of making each batch in the loop.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
Made = TypeVar("Made")

POLL_S = 0.05  # how often a worker waiting on a full queue looks whether it should stop
_END = object()


def prefetched(make: Callable[[Item], Made], items: Iterable[Item], depth: int) -> Iterator[Made]:
    """``make(item)`` for every item of ``items``, in order.

    With ``depth`` > 0 a daemon thread makes up to ``depth`` results ahead of the consumer; an
    exception raised by ``make`` (or by ``items``) is raised here, at the result it stopped, with
    its traceback. Closing the iterator (``contextlib.closing``, or the end of a ``for`` loop)
    stops and joins the thread. ``depth`` = 0 makes each result when it is asked for, in the
    caller's thread.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if depth == 0:
        yield from (make(item) for item in items)
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple[bool, object]) -> bool:
        """Put ``entry`` unless asked to stop first; whether it was put."""
        while not stop.is_set():
            try:
                ready.put(entry, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not offer((True, make(item))):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            offer((False, err))
            return
        offer((True, _END))

    worker = threading.Thread(target=work, name="jat-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = ready.get()
            if not ok:
                raise value  # type: ignore[misc]
            if value is _END:
                return
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
