"""Bad input at scale: a property-based run over the OpenAPI schema (schemathesis) on a
real uvicorn with PostgreSQL and Redis, bounded in examples. No request may get a
5xx, and every refused request (4xx) must change nothing: no study or trial row, no
Optuna study, no queued task."""

from __future__ import annotations

import uuid

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from sqlalchemy import create_engine, text

from tests.conftest import REDIS, Deployment, base_env, fresh_pg_database

EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with fresh_pg_database() as db_url:
        queue = f"samsweep-fuzz-{uuid.uuid4().hex[:8]}"
        env = base_env(tmp, database_url=db_url, broker_url=REDIS, queue=queue)
        env["SAMSWEEP_MAX_GRID_TRIALS"] = "20"  # valid generated specs stay small
        d = Deployment(env=env, tmp=tmp)
        assert d.run("migrate").returncode == 0
        try:
            d.start_api()
            engine = create_engine(db_url)
            yield d, engine
            engine.dispose()
        finally:
            d.stop()
            redis.Redis.from_url(REDIS).delete(queue)


def _operations(d: Deployment) -> list:
    schema = schemathesis.openapi.from_url(f"{d.api_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def _state(d: Deployment, engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        counts = tuple(
            conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("samsweep_studies", "samsweep_trials", "optuna.studies")
        )
    return (*counts, redis.Redis.from_url(REDIS).llen(d.env["SAMSWEEP_QUEUE"]))


# Driven through schemathesis's Hypothesis strategies: its pytest plugin does not
# load under pytest 9 ('Function' object has no attribute '_nodeid').
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_no_server_error_and_refusals_change_nothing(live, mode):
    d, engine = live
    operations = _operations(d)
    assert len(operations) >= 7

    def check(case) -> None:
        before = _state(d, engine)
        response = case.call()
        where = (case.method, case.path, case.path_parameters, case.query, case.body)
        assert response.status_code < 500, (*where, response.text)
        if response.status_code >= 400:
            assert _state(d, engine) == before, (*where, response.text)
            assert set(response.json()["error"]) == {"code", "message", "field", "details"}

    exercised = set()
    for operation in operations:
        run = settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same examples on every run: CI failures reproduce
            database=None,
        )(given(case=operation.as_strategy(generation_mode=mode))(check))
        try:
            run()
            exercised.add(operation.label)
        except Unsatisfiable:  # no input can be made invalid (e.g. GET /health)
            assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
    # Negative cases exist only where inputs are constrained (free-string path ids are not)
    must = {"POST /studies", "GET /studies"}
    if mode == schemathesis.GenerationMode.POSITIVE:
        must |= {op.label for op in operations}
    assert must <= exercised, must - exercised
