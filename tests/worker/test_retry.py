"""The worker's database retry (tenacity): backs off while the database is unreachable,
never sleeps past its budget, and retries nothing else."""

from __future__ import annotations

import time

import pytest
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import OperationalError

from worker.retry import with_db_retry


def _down() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


# docs/faults.md "What must hold": every database and Optuna write retries with backoff
def test_retries_until_the_database_answers():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise _down() if len(calls) % 2 else StorageInternalError("optuna wraps it")
        return "ok"

    assert with_db_retry(flaky, "test", budget=30) == "ok"
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert len(calls) == 4 and 0.2 <= gaps[0] < gaps[1] < gaps[2]  # 0.25, 0.5, 1 s


# docs/faults.md "What must hold": ... for up to SAMSWEEP_DB_RETRY_SECONDS
def test_gives_up_within_the_budget_with_the_last_error():
    start = time.monotonic()
    with pytest.raises(OperationalError):
        with_db_retry(lambda: (_ for _ in ()).throw(_down()), "test", budget=1.0)
    assert time.monotonic() - start <= 1.0  # 0.25 + 0.5; the next 1 s would pass it


def test_other_errors_are_not_retried():
    calls = []

    def broken():
        calls.append(1)
        raise KeyError("Record does not exist")

    with pytest.raises(KeyError):
        with_db_retry(broken, "test", budget=30)
    assert calls == [1]
