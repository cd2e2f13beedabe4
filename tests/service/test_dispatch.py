"""The dispatcher (service/dispatch.py) on PostgreSQL: a bounded window, filled fairly
between studies (priority first, round robin between equals), never past a study's
max_concurrent_trials, one round per deployment; and the sweep's re-send of a trial a
consumer took but never claimed, against real Redis and the embedded broker."""

from __future__ import annotations

import contextlib
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

from samsweep.core.db import Study, Trial, session_factory, utcnow
from samsweep.core.migrate import migrate
from samsweep.core.queue import declare_queue, enqueue_trial, make_celery, waiting_trial_ids
from samsweep.core.settings import Settings
from samsweep.core.spec import StudySpec
from samsweep.core.states import TrialState
from service.dispatch import ROUND_LOCK, Candidate, choose, dispatch
from service.sweeper import resend_unclaimed
from tests.support.specs import digits_spec


class Recording:
    """Celery's producer side as the dispatcher uses it, recording what it sends."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[int] = []
        self.fail_after = fail_after

    @contextlib.contextmanager
    def producer_or_acquire(self):
        yield None

    def send_task(self, name, args, queue, producer=None):
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker down")
        self.sent.append(args[0])


def _study(s, sid: str, seeds: int, **spec_fields) -> list[int]:
    spec = StudySpec.model_validate(
        digits_spec(rho=(0.0,), batch_size=(16,), seeds=tuple(range(seeds)), **spec_fields)
    )
    s.add(Study(id=sid, name=sid, spec=spec.model_dump(mode="json"), n_trials=seeds,
                optuna_study_name=f"samsweep-{sid}", priority=spec.priority,
                max_concurrent_trials=spec.max_concurrent_trials))  # fmt: skip
    s.flush()
    trials = [
        Trial(study_id=sid, number=i, cell_key=t.cell_key, seed=t.seed, params=t.model_dump())
        for i, t in enumerate(spec.trials())
    ]
    s.add_all(trials)
    s.commit()
    return [t.id for t in trials]


def _claim(s, trial_id: int) -> None:
    """What a worker's claim does to the row."""
    s.execute(update(Trial).where(Trial.id == trial_id).values(state=TrialState.RUNNING))
    s.commit()


def _finish(s, trial_id: int) -> None:
    s.execute(update(Trial).where(Trial.id == trial_id).values(state=TrialState.COMPLETE))
    s.commit()


@pytest.fixture
def db(pg_url):
    migrate(Settings(database_url=pg_url))
    return session_factory(pg_url), Settings(database_url=pg_url)


def test_choose_priority_first_then_round_robin_and_bounds():
    old, new = utcnow() - timedelta(minutes=5), utcnow()
    a = Candidate("a", 0, None, new, busy=3, unsent=100)
    b = Candidate("b", 0, None, None, busy=0, unsent=2)  # posted after a: never sent
    c = Candidate("c", 0, 1, old, busy=1, unsent=9)  # at its bound
    urgent = Candidate("u", 5, None, new, busy=0, unsent=1)
    assert choose([a, b, c, urgent], 6) == ["u", "b", "a", "b", "a", "a"]
    assert choose([Candidate("x", 0, 2, None, busy=0, unsent=9)], 5) == ["x", "x"]


# docs/api.md "The dispatcher": the broker holds a window of trials sent but not claimed
# (default: the trials running, at least 2); a second round with the window full sends none
def test_the_window_is_filled_and_topped_up_as_workers_claim(db):
    sessions, settings = db
    with sessions() as s:
        a = _study(s, "a" * 32, 12)
        celery = Recording()
        assert dispatch(s, celery, settings) == 2 and celery.sent == a[:2]
        assert dispatch(s, celery, settings) == 0  # full
        _claim(s, a[0])  # a worker claims one: a place frees
        assert dispatch(s, celery, settings) == 1 and celery.sent == a[:3]
        for t in a[1:3]:
            _claim(s, t)  # three running: the default window grows with them
        assert dispatch(s, celery, settings) == 3 and celery.sent == a[:6]
        fixed = settings.model_copy(update={"dispatch_window": 5})
        assert dispatch(s, celery, fixed) == 2 and celery.sent == a[:8]


# docs/api.md "The dispatcher": a 2-trial study posted after a 12-trial study is sent its
# first trial at the next free place, and the two then take turns
def test_a_small_study_posted_later_is_served_next(db):
    sessions, settings = db
    with sessions() as s:
        a = _study(s, "a" * 32, 12)
        celery = Recording()
        dispatch(s, celery, settings)  # a's first two
        b = _study(s, "b" * 32, 2)
        _claim(s, a[0])
        dispatch(s, celery, settings)
        assert celery.sent == [a[0], a[1], b[0]]
        _claim(s, a[1])
        _claim(s, b[0])
        dispatch(s, celery, settings)  # window 3 (three running): a, then b in turn
        assert celery.sent[3:] == [a[2], b[1], a[3]]


# docs/spec.md "The study spec": priority first; max_concurrent_trials: never more of the
# study's trials running or sent than that, whatever the window
def test_priority_and_max_concurrent_trials(db):
    sessions, settings = db
    wide = settings.model_copy(update={"dispatch_window": 10})
    with sessions() as s:
        low = _study(s, "a" * 32, 5)
        high = _study(s, "b" * 32, 3, priority=1, max_concurrent_trials=2)
        celery = Recording()
        dispatch(s, celery, wide)
        assert celery.sent[:2] == high[:2] and sorted(celery.sent[2:]) == low
        _claim(s, high[0])
        assert dispatch(s, celery, wide) == 0  # high: 2 running or sent; low: all sent
        _finish(s, high[0])
        assert dispatch(s, celery, wide) == 1 and celery.sent[-1] == high[2]


# docs/api.md "Calls" (POST /studies) and docs/faults.md "What must hold": the trials reach the
# broker after the answer; a trial the broker refused stays unsent and a later round sends it
def test_a_cancelled_study_is_sent_nothing_and_a_broker_outage_loses_nothing(db):
    sessions, settings = db
    wide = settings.model_copy(update={"dispatch_window": 10})
    with sessions() as s:
        gone = _study(s, "a" * 32, 3)
        s.get(Study, "a" * 32).cancelled_at = utcnow()
        s.commit()
        kept = _study(s, "b" * 32, 4)
        down = Recording(fail_after=1)
        assert dispatch(s, down, wide) == 1 and down.sent == kept[:1]
        unsent = s.scalars(select(Trial.id).where(Trial.enqueued_at.is_(None))).all()
        assert sorted(unsent) == sorted(gone + kept[1:])  # the refused stay unsent
        up = Recording()
        assert dispatch(s, up, wide) == 3 and up.sent == kept[1:]


# docs/api.md "The dispatcher": one round at a time per deployment (an advisory lock)
def test_one_round_at_a_time_across_api_processes(db):
    sessions, settings = db
    with sessions() as s, sessions() as other:
        _study(s, "a" * 32, 4)
        other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ROUND_LOCK})
        assert dispatch(s, Recording(), settings) == 0  # another replica's round
        other.rollback()  # its round ends (or its process dies): the lock goes
        assert dispatch(s, Recording(), settings) == 2


@pytest.fixture(params=["redis", "embedded"])
def broker(request, tmp_path, redis_url):
    queue = f"samsweep-test-{uuid.uuid4().hex[:8]}"
    url = redis_url if request.param == "redis" else None
    settings = Settings(broker_url=url, state_dir=tmp_path, queue=queue)
    celery = make_celery(settings)
    declare_queue(celery, queue)
    yield celery, queue
    with celery.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


# docs/faults.md "The fault contract": a worker killed between receiving a trial's message
# and claiming the trial: the sweeper sends it again after SAMSWEEP_UNCLAIMED_SECONDS; a
# trial whose message still waits for a free worker is not re-sent
def test_a_trial_taken_but_never_claimed_is_sent_again(db, broker):
    sessions, settings = db
    celery, queue = broker
    with sessions() as s:
        taken, waiting, fresh = _study(s, "a" * 32, 3)
        for t in (taken, waiting, fresh):
            enqueue_trial(celery, queue, t)
        with celery.connection_for_write() as conn:  # a consumer takes the first, then dies
            assert conn.default_channel.basic_get(queue, no_ack=True) is not None
        assert waiting_trial_ids(celery, queue) == {waiting, fresh}
        long_ago = utcnow() - timedelta(minutes=5)
        s.execute(update(Trial).where(Trial.id.in_([taken, waiting])).values(
            enqueued_at=long_ago))  # fmt: skip
        s.execute(update(Trial).where(Trial.id == fresh).values(enqueued_at=utcnow()))
        s.commit()
        assert resend_unclaimed(s, celery, queue, unclaimed_seconds=30) == 1
        rows = {t.id: t.enqueued_at for t in s.scalars(select(Trial))}
        assert rows[taken] is None and rows[waiting] is not None and rows[fresh] is not None
        assert resend_unclaimed(s, celery, queue, unclaimed_seconds=30) == 0
