"""How uvicorn serves the API: bounded connections and timeouts for slow clients.

uvicorn on its own keeps a connection open for as long as its client trickles the
request headers (a byte a second is enough) or its body, and accepts connections
without bound, so a few hundred slow connections ("slowloris") hold the API's sockets
and memory for free. `GuardedH11Protocol` closes a connection whose request headers are
not complete `header_timeout` seconds after their first byte (or after the connection
opened), or whose body is not complete `body_timeout` seconds after its headers;
`limit_concurrency` makes uvicorn answer 503 beyond `max_connections` open connections
per process. Idle keep-alive connections are closed by uvicorn's own keep-alive timeout,
and SIGTERM stops the server within `GRACEFUL_SHUTDOWN_SECONDS` however many requests
are still queued.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from samsweep.core.settings import Settings, get_settings

KEEP_ALIVE_SECONDS = 5
# On SIGTERM, requests in flight get this long to finish; then the server stops anyway
# (uvicorn's default waits for every one of them, however many are queued).
GRACEFUL_SHUTDOWN_SECONDS = 10


class GuardedH11Protocol(H11Protocol):
    """Its timeouts come from the settings (SAMSWEEP_HEADER_TIMEOUT_SECONDS, ...): uvicorn
    imports the class by name in each of its worker processes (`--workers N`)."""

    @property
    def header_timeout(self) -> float:
        return get_settings().header_timeout_seconds

    @property
    def body_timeout(self) -> float:
        return get_settings().body_timeout_seconds

    _deadline: asyncio.TimerHandle | None = None
    _waiting_for: object = None  # h11.IDLE (headers) or h11.SEND_BODY (body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch(idle=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _watch(self, idle: bool = False) -> None:
        """Arm the deadline for what the client owes us now; one deadline per phase, so
        each byte does not buy more time."""
        state = self.conn.their_state
        if state is h11.IDLE and idle:
            self._disarm()  # between requests: uvicorn's keep-alive timeout applies
        elif state is h11.IDLE or state is h11.SEND_BODY:
            if self._waiting_for is not state:
                self._disarm()
                seconds = self.header_timeout if state is h11.IDLE else self.body_timeout
                self._waiting_for = state
                self._deadline = self.loop.call_later(seconds, self._too_slow)
        else:
            self._disarm()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._waiting_for = None, None

    def _too_slow(self) -> None:
        what = "headers" if self._waiting_for is h11.IDLE else "body"
        self._deadline, self._waiting_for = None, None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request %s came too slowly", what)
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's keyword arguments for the API under these settings (the protocol's
    timeouts: get_settings(), the same settings in every process)."""
    return {
        "http": "service.server:GuardedH11Protocol",
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        # No `server: uvicorn` header: what runs the API is nobody's business but its admin's.
        "server_header": False,
    }
