"""The real PostgreSQL and Redis on this machine, whose addresses come from
SAMSWEEP_TEST_POSTGRES (an admin URL) and SAMSWEEP_TEST_REDIS.

Each test gets a fresh PostgreSQL database (and its own Redis queue name), so tests
never see each other's rows or messages."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN = os.environ.get(
    "SAMSWEEP_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS = os.environ.get("SAMSWEEP_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require(host: str, port: int, what: str) -> None:
    if not _reachable(host, port):
        message = f"{what} is not reachable at {host}:{port}"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run these tests, never skip them
        pytest.skip(message)


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    require("127.0.0.1", 5432, "PostgreSQL")
    name = f"samsweep_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        from samsweep.core.db import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def trial_rows(db_url: str, study_id: str) -> list[dict]:
    """The study's trial rows read straight from the database (not through the API)."""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM samsweep_trials WHERE study_id = :s ORDER BY id"),
            {"s": study_id},
        ).mappings()
        result = [dict(r) for r in rows]
    engine.dispose()
    return result
