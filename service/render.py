"""Drawing plots off the API's loop and threads, bounded, coalesced and on a time budget.

matplotlib holds the GIL while it draws, and a large figure can take seconds: drawn in
the API's threadpool, a few plot requests delayed every other request (`/health`
included) and held one thread each while they waited for a process-wide lock. Here:

- plots are drawn in a small pool of separate processes (pebble's ProcessPool, started
  with `spawn` on first use: no fork of the threaded API), so the API's own loop and
  threads stay free while they draw;
- requests for the same plot of the same study version share one drawing (the first
  starts it, the others await it), and the result is cached by the caller;
- at most `workers + queue` drawings are pending at once; a request beyond that gets a
  fast 503 with Retry-After instead of a place in an unbounded queue;
- a drawing that runs past `timeout` seconds is stopped (pebble kills that process and
  starts another) and the plot is refused with a 422 naming the budget; the refusal is
  remembered for `REFUSAL_SECONDS`, so asking again meanwhile costs nothing, and the
  plot is tried again after (a slow drawing may have been the machine's load);
- a drawing process that dies (the OOM killer) or a pool that stopped is a 503 for
  that plot, and the next one starts a new pool;
- a client that goes away does not stop a drawing others may be waiting for (shielded),
  nor does it keep any thread of the API.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from cachetools import TTLCache
from pebble import ProcessExpired, ProcessPool

from service import plots
from service.api.offload import heavy
from service.cache import VersionedCache
from service.errors import ApiError, Busy

log = logging.getLogger(__name__)


class RenderBusy(Busy):
    pass


class PlotTooSlow(ApiError):
    status, code = 422, "plot_too_large"


# How long a plot that ran past its budget is refused without trying again: a slow
# drawing may be the machine's load, not the plot, so the refusal is not forever.
REFUSAL_SECONDS = 60.0


def _warm() -> None:  # the pool's initializer: matplotlib imported before the first plot
    import service.plots  # noqa: F401


class Renderer:
    def __init__(self, workers: int, queue: int, timeout: float) -> None:
        self.workers, self.queue, self.timeout = workers, queue, timeout
        self._pool: ProcessPool | None = None
        self._pool_lock = threading.Lock()
        self._inflight: dict[Hashable, asyncio.Future[bytes]] = {}
        self._refused: TTLCache[Hashable, str] = TTLCache(maxsize=4096, ttl=REFUSAL_SECONDS)

    def _processes(self) -> ProcessPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPool(
                    max_workers=self.workers,
                    initializer=_warm,
                    context=multiprocessing.get_context("spawn"),
                )
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join(timeout=10)
                self._pool = None

    def _discard(self, pool: ProcessPool) -> None:
        """Drop a pool that failed (a drawing process killed, say): the next plot starts
        a new one."""
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        pool.stop()

    async def render(
        self,
        key: Hashable,
        inputs: Callable[[], tuple[Any, ...]],
        cache: VersionedCache,
    ) -> bytes:
        """The plot for `key`: from the cache, from a drawing already under way, or drawn
        now from `inputs()` (run by service.api.offload.heavy: it reads the database) by
        `service.plots.render(*inputs())` in a drawing process."""
        refused = self._refused.get(key)
        if refused is not None:
            raise PlotTooSlow(refused)
        cached = cache.get(key)
        if cached is not None:
            return bytes(cached)
        future = self._inflight.get(key)
        if future is None:
            if len(self._inflight) >= self.workers + self.queue:
                raise RenderBusy(
                    f"{len(self._inflight)} plots are being drawn or waiting; retry shortly"
                )
            future = asyncio.ensure_future(self._draw(key, inputs, cache))
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    async def _draw(
        self, key: Hashable, inputs: Callable[[], tuple[Any, ...]], cache: VersionedCache
    ) -> bytes:
        def prepare() -> tuple[ProcessPool, tuple[Any, ...]]:
            return self._processes(), inputs()  # the first starts the pool: not on the loop

        pool, args = await heavy(prepare)
        try:
            job = pool.schedule(plots.render, args=args, timeout=self.timeout)
            body: bytes = await asyncio.wrap_future(job)
        except FutureTimeout:
            message = (
                f"this plot was not drawn within {self.timeout:g} s "
                "(SAMSWEEP_PLOT_TIMEOUT_SECONDS); the report has every number: "
                "/report?format=csv"
            )
            log.warning("plot %s stopped after %g s", key, self.timeout)
            self._refused[key] = message
            raise PlotTooSlow(message) from None
        except (ProcessExpired, BrokenProcessPool, RuntimeError) as e:
            # The drawing process died (the OOM killer, say) or the pool is not running:
            # a fresh pool for the next plot, a 503 for this one.
            log.warning("plot %s: the drawing process failed (%s); starting a new pool", key, e)
            self._discard(pool)
            raise RenderBusy("the plot's drawing process failed; retry shortly") from None
        cache.put(key, body)
        return body
