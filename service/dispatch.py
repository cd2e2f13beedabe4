"""Sending a study's trials to the broker: the create route (after its 201) and the
sweeper (every round) both call `enqueue_pending`.

The database is the source of truth for the queue; the broker holds only messages that
name a trial (samsweep.core.queue). A trial is marked sent (`enqueued_at`) once the
broker took it, so what was not sent is found again by the next round.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from samsweep.core.db import Trial, utcnow
from samsweep.core.queue import enqueue_trial
from samsweep.core.states import TrialState

log = logging.getLogger(__name__)

# One sender at a time per API process (the create's background send and the sweeper),
# so a trial is not sent twice by one API; several API replicas may still overlap, and
# the worker's claim makes such a duplicate harmless.
_sending = threading.Lock()


def enqueue_pending(
    session: Session, celery: Celery, queue: str, study_id: str | None = None, batch: int = 500
) -> int:
    """Send a task for every QUEUED trial never handed to the broker; returns how many.

    The database is the source of truth: a trial is marked sent (`enqueued_at`) only
    after the broker took it, so a broker outage, or this process dying mid-send,
    leaves the rest unmarked for a later call (the API's sweeper) and loses nothing; at
    worst a trial is sent twice, which the worker's claim absorbs. Batches go over one
    broker connection.
    """
    pending = (Trial.state == TrialState.QUEUED, Trial.enqueued_at.is_(None))
    scope = () if study_id is None else (Trial.study_id == study_id,)
    sent = 0
    with _sending:
        while True:
            ids = session.scalars(
                select(Trial.id).where(*pending, *scope).order_by(Trial.id).limit(batch)
            ).all()
            session.rollback()  # no transaction (or pooled connection) held while sending
            if not ids:
                return sent
            done: list[int] = []
            try:
                with celery.producer_or_acquire() as producer:
                    for trial_id in ids:
                        enqueue_trial(celery, queue, trial_id, producer=producer)
                        done.append(trial_id)
            except Exception as e:  # broker unreachable: the unsent stay unmarked
                log.warning("could not enqueue %d trial(s): %s", len(ids) - len(done), e)
            if done:
                session.execute(
                    update(Trial)
                    .where(Trial.id.in_(done), Trial.enqueued_at.is_(None))
                    .values(enqueued_at=utcnow()),
                    execution_options={"synchronize_session": False},
                )
                session.commit()
            sent += len(done)
            if len(done) < len(ids):
                return sent


def enqueue_study(db: sessionmaker[Session], celery: Celery, queue: str, study_id: str) -> None:
    """After a create's 201 is sent: hand the new study's trials to the broker. If this
    fails or the API dies first, the trials stay unsent and the sweeper sends them."""
    with db() as session:
        enqueue_pending(session, celery, queue, study_id)
