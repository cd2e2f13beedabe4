"""Where the API's expensive work runs: a few threads of its own, never the event loop.

CPython runs one thread at a time: a dozen threads building large pages or reports
take the interpreter lock in turns with the event loop, so every other request (the
`/health` check included) waits behind them, even though none of them is "blocking"
it. Work whose cost grows with a study's size (a page of trials with their curves, a
report, a plot's inputs, and serializing those answers) therefore runs through `heavy`:
in worker threads, at most `HEAVY_THREADS` at once per process, and the answer is built
into bytes there too. Requests beyond that wait their turn without holding a thread
(at most `HEAVY_QUEUE` of them; beyond, a fast 503 with Retry-After), and are dropped
if their client goes away meanwhile; small reads keep the default
threadpool and the loop to themselves.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

import anyio
from starlette.requests import ClientDisconnect, Request

from service.errors import Busy

T = TypeVar("T")
HEAVY_THREADS = 2
HEAVY_QUEUE = 128  # requests waiting for one of them; beyond, a fast 503 with Retry-After
_limiters: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, anyio.CapacityLimiter]
] = weakref.WeakKeyDictionary()


def limiter(name: str, size: int) -> anyio.CapacityLimiter:
    """The capacity limiter `name` (of `size` tokens) of the running event loop: a
    limiter belongs to its loop, and an app may be served by more than one."""
    named = _limiters.setdefault(asyncio.get_running_loop(), {})
    if name not in named:
        named[name] = anyio.CapacityLimiter(size)
    return named[name]


async def heavy(fn: Callable[[], T], request: Request | None = None) -> T:
    """`fn()` in one of the expensive-work threads, once one is free. A request whose
    client has gone while it waited is dropped then, not computed for nobody: abandoned
    requests must not keep the API busy (or deaf to SIGTERM) long after their clients."""
    lane = limiter("heavy", HEAVY_THREADS)
    if lane.statistics().tasks_waiting >= HEAVY_QUEUE:
        raise Busy(f"{HEAVY_QUEUE} expensive reads are waiting already; retry shortly")
    async with lane:
        if request is not None and await request.is_disconnected():
            raise ClientDisconnect  # answered as a quiet 408 (service/errors.py)
        return await anyio.to_thread.run_sync(fn)
