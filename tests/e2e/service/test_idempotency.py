"""Idempotency-Key under concurrency, on a real uvicorn, on PostgreSQL and on SQLite,
with an open API and with tokens: one study per (owner, key) however many requests race;
a replay with the same body returns the first study (200); the same key with another
body is a 422 that says so and creates nothing."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support.db import REDIS
from tests.support.specs import digits_spec

RACERS = 20
ALICE, BOB = "a" * 24, "b" * 24


@pytest.fixture(params=["postgresql", "sqlite"])
def api(request, deployment_factory):
    settings = {"queue": f"samsweep-test-{uuid.uuid4().hex[:8]}"}
    if request.param == "postgresql":
        settings.update(database_url=request.getfixturevalue("pg_url"), broker_url=REDIS)
    d = deployment_factory(**settings)
    assert d.run("migrate").returncode == 0
    return d


def _race(url: str, bodies: list[dict], headers: list[dict]) -> list[httpx.Response]:
    """Fire every request at once (threads released by one barrier)."""
    barrier = threading.Barrier(len(bodies))
    out: list[httpx.Response | None] = [None] * len(bodies)

    def post(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            out[i] = client.post(f"{url}/studies", json=bodies[i], headers=headers[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


def _studies(d) -> int:
    url = d.env.get("SAMSWEEP_DATABASE_URL") or f"sqlite:///{d.tmp}/state/samsweep.sqlite"
    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM samsweep_studies")).scalar_one()
    engine.dispose()
    return n


# docs/api.md "The door": 20 concurrent creates with one Idempotency-Key: one study (open API)
def test_concurrent_replays_create_one_study_open_api(api):
    url = api.start_api()
    key = {"Idempotency-Key": "race-1"}
    responses = _race(url, [digits_spec()] * RACERS, [key] * RACERS)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * (RACERS - 1) + [201], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    # docs/api.md "Calls": a replay says so (`replayed`), the first answer does not
    assert [r.json()["replayed"] for r in responses] == [r.status_code == 200 for r in responses]
    assert _studies(api) == 1


# docs/api.md "The door": ... with tokens: one study per owner
def test_concurrent_replays_per_owner_with_tokens(deployment_factory, pg_url):
    d = deployment_factory(
        database_url=pg_url,
        broker_url=REDIS,
        queue=f"samsweep-test-{uuid.uuid4().hex[:8]}",
        api_tokens=f"alice:{ALICE},bob:{BOB}",
    )
    assert d.run("migrate").returncode == 0
    url = d.start_api()
    headers = [
        {"Idempotency-Key": "shared", "Authorization": f"Bearer {ALICE if i % 2 else BOB}"}
        for i in range(RACERS)
    ]
    responses = _race(url, [digits_spec()] * RACERS, headers)
    assert sorted(r.status_code for r in responses) == [200] * (RACERS - 2) + [201, 201]
    by_owner = {h["Authorization"]: set() for h in headers}
    for h, r in zip(headers, responses, strict=True):
        by_owner[h["Authorization"]].add(r.json()["id"])
    assert all(len(ids) == 1 for ids in by_owner.values())  # one study per owner
    assert len(set().union(*by_owner.values())) == 2 and _studies(d) == 2


# docs/api.md "Calls": the same key with another body is 422 `idempotency_key_reused`
def test_same_key_different_body_is_422_and_changes_nothing(api):
    url = api.start_api()
    key = {"Idempotency-Key": "run-7"}
    first = httpx.post(f"{url}/studies", json=digits_spec(), headers=key)
    assert first.status_code == 201
    # key order and spelled-out defaults do not make a different body
    same = digits_spec()
    same = {k: same[k] for k in reversed(list(same))} | {"objective": "test_accuracy"}
    replay = httpx.post(f"{url}/studies", json=same, headers=key)
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    other = httpx.post(f"{url}/studies", json=digits_spec(epochs=5), headers=key)
    assert other.status_code == 422, other.text
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["field"] == "idempotency-key"
    assert "different request body" in error["message"]
    # racing different bodies under one fresh key: exactly one wins, the rest are 422
    bodies = [digits_spec(epochs=1 + i % 2) for i in range(RACERS)]
    raced = _race(url, bodies, [{"Idempotency-Key": "run-8"}] * RACERS)
    codes = [r.status_code for r in raced]
    assert codes.count(201) == 1 and set(codes) <= {200, 201, 422}, codes
    winner = bodies[codes.index(201)]
    for body, r in zip(bodies, raced, strict=True):
        assert r.status_code == (422 if body != winner else r.status_code)
    assert _studies(api) == 2
