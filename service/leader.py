"""One sweeper and one dispatch loop per deployment, however many API processes serve it
(`samsweep api --workers N`, several replicas): the process that holds the deployment's
leader lock runs them, the others serve requests only and try the lock again each round.

On PostgreSQL the lock is a session advisory lock held by a connection of its own: it
dies with a killed process, or with the connection when the database restarts, and
another process takes it within a round. On SQLite it is an exclusive `flock` on a file
beside the database, which the kernel releases when the process dies.

A create's own dispatch round (service/dispatch.py `dispatch_now`) runs in whichever
process answered it; rounds exclude each other by their own lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from samsweep.core.settings import Settings

# uvicorn's server log (its name is historical: INFO lines go there too), which uvicorn
# sets up in each of its processes: who leads shows in the API's log
log = logging.getLogger("uvicorn.error")

LEADER_LOCK = 0x5A3_1EAD  # pg_try_advisory_lock's key (any constant of this deployment)


def lock_file(settings: Settings, name: str) -> Path:
    """A lock file of the embedded (SQLite) deployment, beside its database."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return settings.state_dir.resolve() / name


class Leadership:
    """Whether this process leads the deployment's sweeper and dispatcher."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.resolved_database_url
        self.postgres = self.url.startswith("postgresql")
        self._conn: Connection | None = None  # PostgreSQL: the session that holds the lock
        self._leading = False
        self._file: IO[str] | None = None

    def hold(self) -> bool:
        """True while this process leads: takes the lock when it is free, and checks
        that a lock it holds is still held (its connection alive)."""
        if self.postgres:
            try:
                return self._hold_postgres()
            except Exception as e:  # the connection, and with it any lock, is gone
                if self._leading:
                    log.warning("this API process lost the leader lock: %s", e)
                self.release()
                raise
        if self._file is not None:
            return True
        return self._take_file()

    def _hold_postgres(self) -> bool:
        """On the one connection this process keeps for it (a process that does not lead
        asks again each round on the same connection, never a new one)."""
        if self._conn is None:
            self._conn = create_engine(self.url, poolclass=NullPool).connect()
        if self._leading:
            self._conn.execute(text("SELECT 1")).scalar()
        else:
            lock = text("SELECT pg_try_advisory_lock(:k)")
            self._leading = bool(self._conn.execute(lock, {"k": LEADER_LOCK}).scalar())
            if self._leading:
                log.info("this API process (pid %d) leads the sweeper and dispatcher",
                         os.getpid())  # fmt: skip
        self._conn.commit()  # the lock is the session's: it outlives the transaction
        return self._leading

    def _take_file(self) -> bool:
        f = open(lock_file(self.settings, "leader.lock"), "a+")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._file = f
        log.info("this API process (pid %d) leads the sweeper and dispatcher", os.getpid())
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        self._leading = False
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None
