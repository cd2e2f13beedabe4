"""What the API derives from a study's trials, computed once per study version.

A report, a `/best` answer or a plot depends only on the study's trials; the digests of
`Snapshot` (service/reads.py) change whenever they can have changed. Entries are keyed on
(study id, version, what), so an entry is never stale: a new version simply misses, and
the old entry ages out of the LRU. Concurrent requests for the same missing entry wait
for one computation instead of each starting their own (`get_or_compute`).

The cache is per API process (several replicas each keep their own): it saves work, it
is never the source of truth.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from cachetools import LRUCache

T = TypeVar("T")


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


def _size(value: Any) -> int:
    """Bytes for bytes and str; for a pydantic model (a Report), 8 times its JSON size, a
    generous estimate of its Python objects; anything else a nominal 4 KiB."""
    if isinstance(value, bytes | str):
        return len(value)
    if hasattr(value, "model_dump_json"):
        return 8 * len(value.model_dump_json())
    return max(sys.getsizeof(value), 4096)


class VersionedCache:
    """A thread-safe LRU bounded in bytes (see `_size`), with single-flight computation."""

    def __init__(self, max_bytes: int) -> None:
        self._entries: LRUCache[Hashable, Any] = LRUCache(maxsize=max_bytes, getsizeof=_size)
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        # A value larger than the whole cache is served, not kept (LRUCache's ValueError).
        with self._lock, contextlib.suppress(ValueError):
            self._entries[key] = value

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self.hits += 1
                return value
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
                self.misses += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = compute()
            self.put(key, flight.value)
            return flight.value
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
