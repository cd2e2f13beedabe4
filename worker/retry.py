"""Retry while the database is unreachable (tenacity), and nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# A connection refused or dropped; Optuna wraps the same errors in StorageInternalError.
DATABASE_DOWN = (OperationalError, StorageInternalError)


def with_db_retry(fn: Callable[[], T], what: str, budget: float = 120.0) -> T:
    """Call `fn`, retrying with exponential backoff (0.25 s doubling to 10 s) while the
    database is unreachable; re-raises the last error once `budget` seconds have
    passed. Nothing but DATABASE_DOWN is retried (tests/worker/test_retry.py;
    tests/e2e/test_faults.py: PostgreSQL refusing for 8 s)."""

    def warn(state: RetryCallState) -> None:
        log.warning(
            "%s: database unavailable (%s); retrying in %.1fs",
            what,
            state.outcome.exception() if state.outcome else None,
            state.upcoming_sleep,
        )

    retrying = Retrying(
        retry=retry_if_exception_type(DATABASE_DOWN),
        wait=wait_exponential(multiplier=0.25, min=0.25, max=10.0),
        stop=stop_before_delay(budget),  # never sleeps past the budget
        before_sleep=warn,
        reraise=True,
    )
    return retrying(fn)
