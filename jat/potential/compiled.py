"""The explicit cache of one potential: compiled functions, device constants and neighbour-list
bounds, keyed by what they depend on, least recently used entries dropped beyond a bound.

Every copy of a potential (``dataclasses.replace`` included) starts with an empty cache, never a
stale one; the ASE calculators of a potential share its cache, so a second calculator reuses the
compiled code of the first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

MAX_ENTRIES = 128


class CompiledCache:
    """A small LRU mapping: ``get(key, make)`` returns the entry, calling ``make()`` once."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        try:
            value = self._entries[key]
        except KeyError:
            value = self._entries[key] = make()
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        """Replace the entry for ``key`` (e.g. a neighbour-list bound that had to grow)."""
        self._entries[key] = value
        self._entries.move_to_end(key)

    def peek(self, key: Hashable, default: Any = None) -> Any:
        return self._entries.get(key, default)

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"CompiledCache({len(self)} entries)"


__all__ = ["CompiledCache"]
