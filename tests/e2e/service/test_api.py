"""API behaviour beyond validation, on a real uvicorn: idempotent create, listing,
and 503 (never 500) while the database is unreachable. (503 while the connection pool
stays busy, in process: tests/service/test_pool.py.)"""

from __future__ import annotations

import httpx

from tests.support.db import REDIS
from tests.support.http import free_port, wait_for
from tests.support.specs import digits_spec


# docs/api.md "Calls": a replay with the same Idempotency-Key and body returns the first
# study with 200; GET /studies is newest first, paginated
def test_idempotency_key_returns_the_first_study(server_deployment):
    # (a different body under the same key, and concurrent replays: test_idempotency.py)
    api = server_deployment.start_api()
    headers = {"Idempotency-Key": "run-42"}
    first = httpx.post(f"{api}/studies", json=digits_spec(), headers=headers)
    again = httpx.post(f"{api}/studies", json=digits_spec(), headers=headers)
    other = httpx.post(f"{api}/studies", json=digits_spec(), headers={"Idempotency-Key": "x"})
    assert first.status_code == 201 and again.status_code == 200 and other.status_code == 201
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]
    listed = httpx.get(f"{api}/studies").json()
    assert listed["total"] == 2
    assert [s["id"] for s in listed["items"]] == [other.json()["id"], first.json()["id"]]
    page = httpx.get(f"{api}/studies", params={"limit": 1, "offset": 1}).json()
    assert [s["id"] for s in page["items"]] == [first.json()["id"]]


# docs/api.md "Errors and states": a database outage is 503 with Retry-After, never 500; /health
# names the database
def test_database_unreachable_is_503(deployment_factory):
    # A database that does not exist: every connection attempt is refused.
    d = deployment_factory(
        database_url="postgresql+psycopg://postgres@127.0.0.1:5432/samsweep_no_such_db",
        broker_url=REDIS,
    )
    port = free_port()
    d.spawn("api", "api", "--port", str(port))
    api = f"http://127.0.0.1:{port}"

    def health_answer():
        try:
            return httpx.get(f"{api}/health")
        except httpx.HTTPError:  # not listening yet
            return None

    health = wait_for(health_answer, 30, d, "the API to answer /health")
    assert health.status_code == 503
    assert health.json()["database"].startswith("unavailable") and health.json()["broker"] == "ok"
    for r in (httpx.get(f"{api}/studies"), httpx.post(f"{api}/studies", json=digits_spec())):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "database_unavailable"
        assert r.headers["retry-after"] == "5"


# docs/api.md "Calls": GET /health is 503 naming the dependency that does not answer.
def test_broker_unreachable_is_503_naming_the_broker(deployment_factory, pg_url):
    d = deployment_factory(database_url=pg_url, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    assert d.run("migrate").returncode == 0
    port = free_port()
    d.spawn("api", "api", "--port", str(port))

    def health_answer():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        except httpx.HTTPError:  # not listening yet
            return None

    health = wait_for(health_answer, 30, d, "the API to answer /health")
    assert health.status_code == 503, health.text
    assert health.json()["broker"].startswith("unavailable") and health.json()["database"] == "ok"


# docs/api.md "Errors and states": a body over SAMSWEEP_MAX_BODY_BYTES is 413 before any work
def test_oversized_body_is_413_before_any_work(deployment_factory, pg_url):
    d = deployment_factory(database_url=pg_url, broker_url=REDIS, max_body_bytes="2048")
    assert d.run("migrate").returncode == 0
    api = d.start_api()
    big = digits_spec(name="x" * 100)
    big["padding"] = "y" * 5000
    declared = httpx.post(f"{api}/studies", json=big)

    def chunks():
        yield b'{"name": "'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"}'

    streamed = httpx.post(f"{api}/studies", content=chunks())  # chunked: no Content-Length
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "body_too_large"
    assert httpx.get(f"{api}/studies").json()["total"] == 0


# docs/api.md "Calls": trials in grid order, paginated (500 by default, at most 1000),
# curves only with `curves=true`
def test_trials_are_paginated_and_curves_optional(server_deployment):
    api = server_deployment.start_api()
    spec = digits_spec(rho=[0.01 * i for i in range(20)], batch_size=range(8, 18), seeds=range(6))
    created = httpx.post(f"{api}/studies", json=spec, timeout=60).json()
    sid, n = created["id"], created["n_trials"]
    assert n == 1200
    params = {"limit": 7, "offset": 3, "curves": "true"}
    page = httpx.get(f"{api}/studies/{sid}/trials", params=params).json()
    assert page["total"] == n and page["limit"] == 7 and page["offset"] == 3
    assert [t["number"] for t in page["trials"]] == list(range(3, 10)) and page["next_offset"] == 10
    assert all(t["curves"] == [] for t in page["trials"])  # none run yet, but present
    lean = httpx.get(f"{api}/studies/{sid}/trials").json()
    assert len(lean["trials"]) == 500 and all(t["curves"] is None for t in lean["trials"])
    last = httpx.get(f"{api}/studies/{sid}/trials", params={"offset": n - 5}).json()
    assert len(last["trials"]) == 5 and last["next_offset"] is None
    assert httpx.get(f"{api}/studies/{sid}/trials", params={"limit": 1001}).status_code == 422
    # the client (samsweep run's tables) reads every page
    from samsweep import Client

    with Client(api, timeout=60) as client:
        numbers = [t.number for t in client.trials(sid, curves=False)]
    assert numbers == list(range(n))


# docs/DESIGN.md §4 "Per-epoch records": a trial's curves are the epochs recorded for it, in epoch
# order (one row per epoch, assembled by samsweep.core.db.curves_for), [] before its first epoch;
# the curves plot draws them
def test_trials_carry_their_recorded_epochs_in_order(server_deployment, pg_url):
    from sqlalchemy import select

    from samsweep.core.db import Trial, put_epochs, session_factory

    api = server_deployment.start_api()
    sid = httpx.post(f"{api}/studies", json=digits_spec(), timeout=60).json()["id"]
    recorded = {
        0: [{"epoch": e, "train_accuracy": 0.5, "test_accuracy": e / 20, "lr": 0.1}
            for e in range(1, 13)],
        2: [{"epoch": 1, "train_accuracy": 0.4, "test_accuracy": 0.3, "lr": 0.1}],
    }  # fmt: skip
    with session_factory(pg_url)() as session:
        ids = dict(session.execute(select(Trial.number, Trial.id)).all())
        for number, records in recorded.items():  # appended in any order, read in order
            put_epochs(session, ids[number], records[::-1])
        session.commit()
    trials = httpx.get(f"{api}/studies/{sid}/trials?curves=true").json()["trials"]
    assert {t["number"]: t["curves"] for t in trials} == {
        n: recorded.get(n, []) for n in range(len(trials))
    }
    lean = httpx.get(f"{api}/studies/{sid}/trials").json()  # curves only when asked for
    assert all(t["curves"] is None for t in lean["trials"])
    plot = httpx.get(f"{api}/studies/{sid}/plots/curves", params={"trial": 0}, timeout=60)
    assert plot.status_code == 200 and plot.headers["content-type"].startswith("image/svg")


# docs/report.md "The report": a study whose stored spec no longer validates is a 409 naming why
# on /report and /best, never a 500; a new study's report counts its queued cells
def test_report_of_a_queued_study_and_of_a_stale_spec(server_deployment):
    from sqlalchemy import create_engine, text

    api = server_deployment.start_api()  # no worker: every trial stays QUEUED
    study = httpx.post(f"{api}/studies", json=digits_spec()).json()["id"]
    report = httpx.get(f"{api}/studies/{study}/report").json()
    rows = [row for g in report["groups"] for row in g["rows"]]
    assert report["counts"] == {"QUEUED": 4} and [r["counts"] for r in rows] == [{"QUEUED": 1}] * 4
    assert all(r["metrics"]["test_accuracy"]["n"] == 0 for r in rows)
    assert all(g["selected_rho"] is None and g["gain"] is None for g in report["groups"])
    engine = create_engine(server_deployment.env["SAMSWEEP_DATABASE_URL"])
    with engine.begin() as conn:  # as if stored before the printable-text rule
        conn.execute(
            text("UPDATE samsweep_studies SET spec = "
                 "jsonb_set(spec, '{name}', to_jsonb(E'tab\\there'::text))")
        )  # fmt: skip
    engine.dispose()
    for path in ("report", "best"):
        r = httpx.get(f"{api}/studies/{study}/{path}")
        assert r.status_code == 409, r.text
        assert "no longer validates" in r.json()["error"]["message"]
