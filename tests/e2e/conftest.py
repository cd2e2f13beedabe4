"""Fixtures that start real processes: the API and workers as real subprocesses
(uvicorn, Celery) on PostgreSQL and Redis, as in production. Every test in this
directory is marked e2e (tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.db import REDIS, fresh_pg_database, require
from tests.support.http import wait_study
from tests.support.processes import Deployment, FinishedStudy, base_env
from tests.support.specs import FINISHED_SPEC


@pytest.fixture
def deployment_factory(tmp_path: Path) -> Iterator:
    made: list[Deployment] = []

    def make(**settings: str) -> Deployment:
        d = Deployment(env=base_env(tmp_path, **settings), tmp=tmp_path)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def server_deployment(deployment_factory, pg_url: str, redis_url: str) -> Deployment:
    """PostgreSQL + Redis, migrated; start the API and workers in the test."""
    d = deployment_factory(
        database_url=pg_url, broker_url=redis_url, queue=f"samsweep-test-{uuid.uuid4().hex[:8]}"
    )
    result = d.run("migrate")
    assert result.returncode == 0, result.stderr
    return d


@pytest.fixture(params=["embedded", "postgresql+redis"])
def deployment(request, deployment_factory) -> Deployment:
    """The embedded default (SQLite, the SQLite broker) and PostgreSQL + Redis, migrated;
    start the API and workers in the test."""
    settings = {"queue": f"samsweep-test-{uuid.uuid4().hex[:8]}"}
    if request.param != "embedded":
        settings.update(
            database_url=request.getfixturevalue("pg_url"),
            broker_url=request.getfixturevalue("redis_url"),
        )
    d = deployment_factory(**settings)
    result = d.run("migrate")
    assert result.returncode == 0, result.stderr
    return d


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory) -> Iterator[FinishedStudy]:
    """PostgreSQL + Redis, the API and one worker, and FINISHED_SPEC run to completion:
    shared by the CLI and client tests that only read (tests/e2e/cli/test_cli_studies.py,
    tests/e2e/client/test_client_live.py)."""
    require("127.0.0.1", 6379, "Redis")
    tmp = tmp_path_factory.mktemp("finished")
    with fresh_pg_database() as db_url:
        env = base_env(
            tmp,
            database_url=db_url,
            broker_url=REDIS,
            queue=f"samsweep-test-{uuid.uuid4().hex[:8]}",
        )
        d = Deployment(env=env, tmp=tmp)
        try:
            result = d.run("migrate")
            assert result.returncode == 0, result.stderr
            api = d.start_api()
            d.start_worker()
            created = httpx.post(f"{api}/studies", json=FINISHED_SPEC, timeout=30).json()
            wait_study(api, created["id"], d=d)
            yield FinishedStudy(d, api, created["id"], FINISHED_SPEC)
        finally:
            d.stop()
