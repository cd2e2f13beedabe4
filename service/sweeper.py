"""The API's background sweep: the database is the source of truth for the queue.

Every SAMSWEEP_SWEEP_SECONDS it (1) returns to the queue every RUNNING trial whose worker
stopped heartbeating (a killed worker, a lost host), up to `max_attempts`, after which
the trial FAILs with the reason; (2) marks every sent trial unsent again if the broker
restarted (its queue may be lost); (3) marks unsent again a trial that was sent, taken
by a consumer and never claimed (a worker killed between receiving its message and
claiming the trial: `resend_unclaimed`). In between, every SAMSWEEP_DISPATCH_SECONDS,
the dispatcher (service/dispatch.py) tops up the broker's window from the unsent trials.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import or_, select, true, update
from sqlalchemy.orm import Session

from samsweep.core import optuna_store
from samsweep.core.db import Meta, Study, Trial, rows_updated, session_factory, utcnow
from samsweep.core.draws import budgets
from samsweep.core.queue import broker_identity, waiting_trial_ids
from samsweep.core.settings import Settings
from samsweep.core.states import TrialState
from service.dispatch import dispatch
from service.leader import Leadership

log = logging.getLogger(__name__)
BROKER_IDENTITY = "broker_identity"


def requeue_stale(session: Session, stale_after: float, max_attempts: int) -> int:
    """Release trials whose heartbeat is older than `stale_after` seconds: back to the
    queue, FAILED after the last attempt, or CANCELLED if their study was cancelled
    (a worker stopped before it saw the cancel must not leave it to be trained again)."""
    cutoff = utcnow() - timedelta(seconds=stale_after)
    stale = session.execute(
        select(Trial, Study.cancelled_at)
        .join(Study, Study.id == Trial.study_id)
        .where(
            Trial.state == TrialState.RUNNING,
            or_(Trial.heartbeat_at.is_(None), Trial.heartbeat_at < cutoff),
        )
    ).all()
    for t, cancelled_at in stale:
        last_attempt = t.attempts >= max_attempts
        if cancelled_at is not None:
            values = {"state": TrialState.CANCELLED, "finished_at": utcnow(), "error": "cancelled"}
        elif last_attempt:
            values = {
                "state": TrialState.FAILED,
                "finished_at": utcnow(),
                "error": f"worker lost: no heartbeat for {stale_after:.0f}s "
                f"after {t.attempts} attempts",
            }
        else:
            values = {"state": TrialState.QUEUED, "enqueued_at": None}
        # Guarded by the claim token: if the worker beat in the meantime, nothing changes.
        session.execute(
            update(Trial)
            .where(
                Trial.id == t.id,
                Trial.claim_token == t.claim_token,
                Trial.state == TrialState.RUNNING,
            )
            .values(claim_token=None, **values)
        )
        log.warning("trial %s: worker %s lost; %s", t.id, t.worker, values["state"])
    session.commit()
    return len(stale)


def resend_after_broker_restart(session: Session, celery: Celery) -> int:
    """If the broker restarted since the last round, re-send every QUEUED trial.

    A Redis restarted without its data has lost the queue; one restarted from its
    append-only file has not, and the re-sent duplicates are skipped by the claim.
    The identity is kept in the database, so a restart while the API was down counts.
    """
    identity = broker_identity(celery)
    if identity is None:
        return 0
    seen = session.get(Meta, BROKER_IDENTITY)
    if seen is not None and seen.value == identity:
        return 0
    n = 0
    if seen is None:  # first round ever: nothing to compare with
        session.add(Meta(key=BROKER_IDENTITY, value=identity))
    else:
        seen.value = identity
        n = rows_updated(
            session,
            update(Trial)
            .where(Trial.state == TrialState.QUEUED, Trial.enqueued_at.is_not(None))
            .values(enqueued_at=None),
        )
        log.warning("the broker restarted: re-sending %d queued trial(s)", n)
    session.commit()
    return n


def resend_unclaimed(session: Session, celery: Celery, queue: str, unclaimed_seconds: float) -> int:
    """Mark unsent again the trials sent more than `unclaimed_seconds` ago, still QUEUED,
    whose message no longer waits in the queue: a consumer took it and never claimed the
    trial (killed before its claim; on Redis the message would wait for the visibility
    timeout, on the embedded broker forever). The dispatcher sends them again; if the
    first message is alive after all, the claim absorbs the duplicate. A trial whose
    message still waits for a free worker is left alone, however long it waits."""
    cutoff = utcnow() - timedelta(seconds=unclaimed_seconds)
    old = set(
        session.scalars(
            select(Trial.id).where(
                Trial.state == TrialState.QUEUED,
                Trial.enqueued_at.is_not(None),
                Trial.enqueued_at < cutoff,
            )
        )
    )
    if not old:
        return 0
    taken = old - waiting_trial_ids(celery, queue)
    if taken:
        n = rows_updated(
            session,
            update(Trial)
            .where(
                Trial.id.in_(taken),
                Trial.state == TrialState.QUEUED,
                Trial.enqueued_at < cutoff,
            )
            .values(enqueued_at=None),
        )
        log.warning("%d trial(s) taken by a consumer but never claimed: sending them again", n)
    session.commit()
    return len(taken)


def settle_orphaned_optuna_trials(session: Session, settings: Settings) -> int:
    """FAIL the Optuna trials of sampler studies still drawing that stayed RUNNING for
    longer than SAMSWEEP_STALE_SECONDS while their samsweep trial is neither queued nor
    running (or never was committed: a dispatch round that failed after its draw). TPE's
    constant liar counts a RUNNING trial as a configuration under way; a dead one must not
    steer its draws forever. A trial queued again after a lost worker keeps its own until
    its re-run settles it (worker/runner.py)."""
    url = settings.resolved_optuna_url
    live = (TrialState.QUEUED, TrialState.RUNNING)
    drawing = select(Trial.study_id).where(Trial.state.in_(live))
    to_draw = [sid for sid, _ in budgets(session, true())]
    studies = session.execute(
        select(Study.id, Study.optuna_study_name).where(
            Study.sampler.is_not(None),
            Study.cancelled_at.is_(None),
            or_(Study.id.in_(drawing), Study.id.in_(to_draw)),
        )
    ).all()
    cutoff = datetime.now() - timedelta(seconds=settings.stale_after_seconds)  # Optuna's clock
    settled = 0
    for study_id, name in studies:
        for t in optuna_store.running_trials(url, name):
            if t.datetime_start is None or t.datetime_start > cutoff:
                continue
            row = t.user_attrs.get("samsweep_trial_id")
            state = session.scalar(
                select(Trial.state).where(Trial.id == row, Trial.study_id == study_id)
            ) if isinstance(row, int) else None  # fmt: skip
            if state not in live:
                optuna_store.fail_trial(url, t._trial_id, "its samsweep trial is not running")
                settled += 1
    session.commit()
    if settled:
        log.warning("failed %d Optuna trial(s) left running without a trial", settled)
    return settled


def sweep_once(session: Session, celery: Celery, settings: Settings) -> None:
    requeue_stale(session, settings.stale_after_seconds, settings.max_attempts)
    resend_after_broker_restart(session, celery)
    resend_unclaimed(session, celery, settings.queue, settings.unclaimed_seconds)
    settle_orphaned_optuna_trials(session, settings)
    if n := dispatch(session, celery, settings):
        log.info("sent %d queued trial(s) to the broker", n)


FAILURE_LOG_SECONDS = 60.0


class Failures:
    """The sweep's failures as the log sees them: the first at once, then one line a
    minute while they go on (a round runs every SAMSWEEP_DISPATCH_SECONDS: a database
    outage must not write four lines a second), and one when a round succeeds again."""

    def __init__(self, every: float = FAILURE_LOG_SECONDS) -> None:
        self.every, self.count, self.logged_at = every, 0, 0.0

    def failed(self, e: Exception) -> None:
        self.count += 1
        now = time.monotonic()
        if self.count == 1 or now - self.logged_at >= self.every:
            more = f" ({self.count} failed rounds so far)" if self.count > 1 else ""
            log.warning("sweep failed%s: %s", more, e)
            self.logged_at = now

    def succeeded(self) -> None:
        if self.count:
            log.warning("sweep recovered after %d failed round(s)", self.count)
            self.count = 0


def sweep_forever(settings: Settings, celery: Celery, stop: threading.Event) -> None:
    """The sweep every SAMSWEEP_SWEEP_SECONDS, a dispatch round every
    SAMSWEEP_DISPATCH_SECONDS in between (one cheap count while the window is full), in
    the one API process of the deployment that leads (service/leader.py)."""
    sessions = session_factory(settings.resolved_database_url)
    next_sweep = time.monotonic() + settings.sweep_seconds
    failures = Failures()
    leadership = Leadership(settings)
    try:
        while not stop.wait(settings.dispatch_seconds):
            try:
                if not leadership.hold():  # another API process sweeps and dispatches
                    continue
                with sessions() as session:
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + settings.sweep_seconds
                        sweep_once(session, celery, settings)
                    else:
                        dispatch(session, celery, settings)
            except Exception as e:  # the database may be down for a while: next round
                failures.failed(e)
            else:
                failures.succeeded()
    finally:
        leadership.release()
