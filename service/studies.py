"""Study operations behind the routes: create (rows, Optuna study, tasks) and reads."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from samsweep import optuna_store
from samsweep.catalog import SpecError, check_spec
from samsweep.db import FINISHED_STATES, Study, Trial, TrialState, new_id, utcnow
from samsweep.queue import enqueue_trial
from samsweep.settings import Settings
from samsweep.spec import StudySpec
from service.errors import Conflict, InvalidSpec, NotFound

log = logging.getLogger(__name__)


def create_study(
    session: Session,
    settings: Settings,
    celery: Celery,
    spec: StudySpec,
    owner: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[Study, bool]:
    """Validate, write the study and one row per (cell, seed), create the Optuna study,
    then enqueue. Returns (study, created). A refused spec creates nothing."""
    if idempotency_key is not None:
        existing = session.scalar(
            select(Study).where(Study.owner == owner, Study.idempotency_key == idempotency_key)
        )
        if existing is not None:
            return existing, False
    try:
        check_spec(spec, settings.data_dir, settings.max_grid_trials)
    except SpecError as e:
        raise InvalidSpec(str(e), field=e.field) from e

    study_id = new_id()
    study = Study(
        id=study_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        n_trials=spec.n_trials,
        optuna_study_name=f"samsweep-{study_id}",
        owner=owner,
        idempotency_key=idempotency_key,
    )
    session.add(study)
    session.add_all(
        Trial(study_id=study_id, number=i, cell_key=c.key, seed=c.seed, params=c.params())
        for i, c in enumerate(spec.cells())
    )
    try:
        session.flush()
    except IntegrityError as e:  # a concurrent request with the same Idempotency-Key
        session.rollback()
        raise Conflict("a study with this Idempotency-Key is being created") from e
    # Optuna's study is created inside our transaction's lifetime: if it fails we roll
    # back, and if our commit fails we delete it, so a failed create leaves nothing.
    optuna_url = settings.resolved_optuna_url
    optuna_store.create_study(optuna_url, study.optuna_study_name, study_id, spec)
    try:
        session.commit()
    except Exception:
        session.rollback()
        optuna_store.delete_study(optuna_url, study.optuna_study_name)
        raise
    enqueue_pending(session, celery, settings.queue, study_id)
    return study, True


def enqueue_pending(
    session: Session, celery: Celery, queue: str, study_id: str | None = None
) -> int:
    """Send a task for every QUEUED trial never handed to the broker; returns how many.

    The database is the source of truth: if the broker is down now, the trials stay
    QUEUED with no `enqueued_at`, and a later call (the API's sweeper) sends them.
    Each trial is marked with a compare-and-set before sending, so concurrent callers
    (a create request and the sweeper) never send the same trial twice.
    """
    query = select(Trial.id).where(Trial.state == TrialState.QUEUED, Trial.enqueued_at.is_(None))
    if study_id is not None:
        query = query.where(Trial.study_id == study_id)
    sent = 0
    for trial_id in session.scalars(query.order_by(Trial.id)).all():
        unsent = (Trial.id == trial_id, Trial.state == TrialState.QUEUED)
        marked = session.execute(
            update(Trial).where(*unsent, Trial.enqueued_at.is_(None)).values(enqueued_at=utcnow())
        ).rowcount
        session.commit()
        if not marked:
            continue  # another caller is sending it
        try:
            enqueue_trial(celery, queue, trial_id)
        except Exception as e:  # broker unreachable: unmark it for the sweeper
            log.warning("could not enqueue trial %s: %s", trial_id, e)
            session.execute(update(Trial).where(*unsent).values(enqueued_at=None))
            session.commit()
            break
        sent += 1
    return sent


def get_study(session: Session, study_id: str, owner: str | None = None) -> Study:
    study = session.get(Study, study_id)
    if study is None or (owner is not None and study.owner != owner):
        raise NotFound(f"no study with id {study_id!r}")
    return study


def cancel_study(session: Session, study: Study) -> None:
    """Mark the study cancelled and its QUEUED trials CANCELLED, in one transaction.

    Running trials see `cancelled_at` at their next epoch boundary (worker/runner.py)
    and stop; a queued task delivered later finds its trial no longer QUEUED.
    Finished trials keep their results. Cancelling twice changes nothing more.
    """
    now = utcnow()
    session.execute(
        update(Study)
        .where(Study.id == study.id, Study.cancelled_at.is_(None))
        .values(cancelled_at=now)
    )
    session.execute(
        update(Trial)
        .where(Trial.study_id == study.id, Trial.state == TrialState.QUEUED)
        .values(state=TrialState.CANCELLED, finished_at=now, error="cancelled", claim_token=None)
    )
    session.commit()
    session.refresh(study)


def state_counts(session: Session, study_id: str) -> dict[str, int]:
    return state_counts_many(session, [study_id])[study_id]


def state_counts_many(session: Session, study_ids: list[str]) -> dict[str, dict[str, int]]:
    """Trials per state for each study, every state present (0 if none): one query."""
    counts = {sid: Counter({s.value: 0 for s in TrialState}) for sid in study_ids}
    rows = session.execute(
        select(Trial.study_id, Trial.state, func.count())
        .where(Trial.study_id.in_(study_ids))
        .group_by(Trial.study_id, Trial.state)
    )
    for sid, state, n in rows:
        counts[sid][state] = n
    return {sid: dict(c) for sid, c in counts.items()}


def study_status(study: Study, counts: dict[str, int]) -> str:
    finished = sum(counts[s] for s in FINISHED_STATES)
    if study.cancelled_at is not None and finished == study.n_trials:
        return "cancelled"
    if finished == study.n_trials:
        return "complete"
    if counts[TrialState.RUNNING] or finished:
        return "running"
    return "queued"


def timings(session: Session, study: Study) -> dict[str, Any]:
    started, last = session.execute(
        select(func.min(Trial.started_at), func.max(Trial.finished_at)).where(
            Trial.study_id == study.id
        )
    ).one()
    return {"created_at": study.created_at, "started_at": started, "last_finished_at": last}


def best_trial(session: Session, study_id: str) -> Trial | None:
    return session.scalar(
        select(Trial)
        .where(Trial.study_id == study_id, Trial.state == TrialState.COMPLETE)
        .order_by(Trial.value.desc(), Trial.number)
        .limit(1)
    )


def list_studies(
    session: Session, limit: int, offset: int, owner: str | None = None
) -> tuple[list[Study], int]:
    query = select(Study)
    count = select(func.count()).select_from(Study)
    if owner is not None:
        query, count = query.where(Study.owner == owner), count.where(Study.owner == owner)
    rows = session.scalars(
        query.order_by(Study.created_at.desc(), Study.id).limit(limit).offset(offset)
    )
    return list(rows), session.scalar(count) or 0


def elapsed_seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or utcnow()) - start).total_seconds()
