"""The API's sweep on PostgreSQL: a RUNNING trial whose worker stopped heartbeating goes
back to the queue (or FAILs after the last attempt); a live one is left alone; every
QUEUED trial is sent again after a broker restart (real Redis). The dispatcher's own
tests: tests/service/test_dispatch.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from samsweep.core.db import Study, Trial, session_factory, utcnow
from samsweep.core.migrate import migrate
from samsweep.core.settings import Settings
from samsweep.core.spec import StudySpec
from samsweep.core.states import TrialState
from service.sweeper import requeue_stale
from tests.support.specs import digits_spec


@pytest.fixture
def session(pg_url):
    migrate(Settings(database_url=pg_url))
    with session_factory(pg_url)() as s:
        spec = StudySpec.model_validate(digits_spec())
        s.add(
            Study(
                id="s1",
                name="t",
                spec=spec.model_dump(mode="json"),
                n_trials=4,
                optuna_study_name="samsweep-s1",
            )
        )
        s.add_all(
            Trial(study_id="s1", number=i, cell_key=t.cell_key, seed=t.seed, params=t.model_dump())
            for i, t in enumerate(spec.trials())
        )
        s.commit()
        yield s


def _running(session, number: int, beat_age: float, attempts: int) -> Trial:
    t = session.scalar(select(Trial).where(Trial.number == number))
    t.state, t.attempts, t.claim_token = TrialState.RUNNING, attempts, f"tok{number}"
    t.heartbeat_at = utcnow() - timedelta(seconds=beat_age)
    session.commit()
    return t


# docs/faults.md "What must hold": the sweeper returns a trial whose worker stopped heartbeating
# to the queue, up to SAMSWEEP_MAX_ATTEMPTS runs, then FAILs it with the reason
def test_requeue_stale_trials(session):
    alive = _running(session, 0, beat_age=2, attempts=1)
    dead = _running(session, 1, beat_age=120, attempts=1)
    exhausted = _running(session, 2, beat_age=120, attempts=3)
    assert requeue_stale(session, stale_after=30, max_attempts=3) == 2
    for t in (alive, dead, exhausted):
        session.refresh(t)
    assert alive.state == TrialState.RUNNING and alive.claim_token == "tok0"
    assert dead.state == TrialState.QUEUED and dead.enqueued_at is None and dead.claim_token is None
    assert exhausted.state == TrialState.FAILED
    assert exhausted.error.startswith("worker lost: no heartbeat for 30s after 3 attempts")


# docs/faults.md "The fault contract": a worker stopped after its study was cancelled -> the stale
# trial is CANCELLED, not re-run
def test_a_stale_trial_of_a_cancelled_study_is_cancelled_not_requeued(session):
    dead = _running(session, 1, beat_age=120, attempts=1)
    session.get(Study, "s1").cancelled_at = utcnow()
    session.commit()
    assert requeue_stale(session, stale_after=30, max_attempts=3) == 1
    session.refresh(dead)
    assert dead.state == TrialState.CANCELLED and dead.error == "cancelled"
    assert dead.claim_token is None and dead.finished_at is not None


# docs/faults.md "What must hold": the sweeper re-sends every QUEUED trial when Redis's run_id
# changes (a restart that may have lost the queue; the id is kept in the database, so a
# restart while the API was down counts: docs/faults.md "What must hold", "Sweeper")
def test_a_broker_restart_while_the_api_was_down_resends_the_queued_trials(
    session, pg_url, redis_url
):
    import uuid

    import redis

    from samsweep.core.db import Meta
    from samsweep.core.queue import broker_identity, make_celery
    from service.sweeper import BROKER_IDENTITY, sweep_once

    queue = f"samsweep-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=pg_url, broker_url=redis_url, queue=queue, dispatch_window=10)
    celery = make_celery(settings)
    trials = session.scalars(select(Trial).order_by(Trial.number)).all()
    sent_before = utcnow()
    for t in trials[:3]:  # sent to the Redis that was there before (its messages are gone)
        t.enqueued_at = sent_before
    trials[3].state, trials[3].finished_at = TrialState.COMPLETE, utcnow()
    # what the sweeper recorded before the API went down: another Redis's run_id
    session.add(Meta(key=BROKER_IDENTITY, value="run-id-of-the-redis-before-its-restart"))
    session.commit()
    r = redis.Redis.from_url(redis_url)
    try:
        sweep_once(session, celery, settings)  # the first round of a freshly started API
        assert session.get(Meta, BROKER_IDENTITY).value == broker_identity(celery)
        for t in trials:
            session.refresh(t)
        assert all(t.enqueued_at > sent_before for t in trials[:3])  # re-sent
        assert r.llen(queue) == 3  # every QUEUED trial, not the COMPLETE one
        sweep_once(session, celery, settings)  # the same Redis: nothing more is sent
        assert r.llen(queue) == 3
    finally:
        r.delete(queue)
        r.close()


# docs/faults.md "The fault contract": a database outage is one warning a minute in the API's
# log, not one per dispatch round, and a line when it is over
def test_a_database_outage_is_logged_once_a_minute_not_every_round(caplog, tmp_path, monkeypatch):
    import threading

    from service.sweeper import Failures, sweep_forever

    rounds = []
    failed = Failures.failed
    monkeypatch.setattr(Failures, "failed", lambda self, e: (rounds.append(e), failed(self, e)))

    down = Settings(
        state_dir=tmp_path,
        database_url="postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1",
        dispatch_seconds=0.01,
    )
    stop = threading.Event()
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    with caplog.at_level("WARNING", logger="service.sweeper"):
        sweep_forever(down, celery=None, stop=stop)  # refused at once: many rounds
    lines = [r.getMessage() for r in caplog.records if r.name == "service.sweeper"]
    assert len(lines) == 1 and lines[0].startswith("sweep failed: "), lines
    assert len(rounds) > 5  # many rounds failed meanwhile


def test_failures_are_counted_and_the_recovery_said(caplog):
    from service.sweeper import Failures

    failures = Failures(every=0.0)  # every failure logged: the count shows
    with caplog.at_level("WARNING", logger="service.sweeper"):
        for _ in range(3):
            failures.failed(ConnectionError("refused"))
        failures.succeeded()
        failures.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "sweep failed: refused",
        "sweep failed (2 failed rounds so far): refused",
        "sweep failed (3 failed rounds so far): refused",
        "sweep recovered after 3 failed round(s)",
    ]
