"""Study operations behind the routes: create (rows, Optuna study, tasks) and reads."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from pydantic import ValidationError
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from samsweep.core import optuna_store
from samsweep.core.admission import AdmissionError, check_admission
from samsweep.core.db import IdempotencyKey, Study, Trial, new_id, utcnow
from samsweep.core.ids import STUDY_ID
from samsweep.core.queue import enqueue_trial
from samsweep.core.report import Report, TrialRecord, build_report
from samsweep.core.settings import Settings
from samsweep.core.spec import StudySpec, TrialParams
from samsweep.core.states import FINISHED_STATES, StudyStatus, TrialState
from service.cache import VersionedCache
from service.errors import (
    Busy,
    Conflict,
    IdempotencyMismatch,
    InvalidSpec,
    LimitExceeded,
    NotFound,
)

log = logging.getLogger(__name__)


def request_digest(spec: StudySpec) -> str:
    """SHA-256 of the validated spec: the same study whatever the key order or defaults."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(session: Session, owner: str, key: str, digest: str) -> Study | None:
    """The study first created with this key, or None; 422 if it had another body."""
    row = session.get(IdempotencyKey, (owner, key))
    if row is None:
        return None
    if row.request_digest and row.request_digest != digest:  # '' = recorded before digests
        raise IdempotencyMismatch(
            "this Idempotency-Key was used with a different request body; "
            "use a new key for a different study",
            field="idempotency-key",  # as FastAPI names the header's own 422s
        )
    return session.get(Study, row.study_id)


def insert_study(
    session: Session,
    settings: Settings,
    spec: StudySpec,
    owner: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[Study, bool]:
    """Validate, then write the study, its key and one row per (cell, seed) and create
    the Optuna study, all or nothing. Returns (study, created); the trials are sent to
    the broker afterwards (`enqueue_pending`), off the request. A refused spec, or one
    past the owner's quota (`check_quota`, 429), creates nothing.

    With an Idempotency-Key, one study exists per (owner, key) whatever the concurrency:
    the key row's primary key lets one request commit; the others wait for it (the
    database's unique-index lock), then answer with its study, or 422 if their body
    differs.
    """
    digest, scope = request_digest(spec), owner or ""
    if spec.n_trials > settings.max_pending_trials_per_owner:  # could never be accepted
        raise InvalidSpec(
            f"the grid has {spec.n_trials} trials; SAMSWEEP_MAX_PENDING_TRIALS_PER_OWNER "
            f"allows {settings.max_pending_trials_per_owner} queued at once",
            field="search",
        )
    if not _creating.acquire(timeout=CREATE_WAIT_SECONDS):
        raise Busy(f"{CREATES} studies are being created; retry shortly")
    try:
        if idempotency_key is not None:
            existing = _replay(session, scope, idempotency_key, digest)
            if existing is not None:
                return existing, False
        check_quota(session, settings, owner, spec.n_trials)  # a fast 429, before any wait
        session.rollback()  # hold no pooled connection while the dataset files are checked
        try:
            check_admission(spec, settings.data_dir, settings.max_grid_trials)
        except AdmissionError as e:
            raise InvalidSpec(str(e), field=e.field) from e
        with _quota_lock(session, scope):  # held until this transaction commits or rolls back
            if idempotency_key is not None:  # a concurrent retry may have created it meanwhile
                existing = _replay(session, scope, idempotency_key, digest)
                if existing is not None:
                    return existing, False
            check_quota(session, settings, owner, spec.n_trials)
            return _insert(session, settings, spec, owner, idempotency_key, digest, scope)
    finally:
        _creating.release()


def _insert(
    session: Session,
    settings: Settings,
    spec: StudySpec,
    owner: str | None,
    idempotency_key: str | None,
    digest: str,
    scope: str,
) -> tuple[Study, bool]:
    study_id = new_id()
    study = Study(
        id=study_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        n_trials=spec.n_trials,
        optuna_study_name=optuna_store.study_name(spec.name, study_id),
        owner=owner,
        idempotency_key=idempotency_key,
    )
    try:
        session.add(study)
        session.flush()  # before its key row, which references it
        if idempotency_key is not None:
            key = IdempotencyKey(
                owner=scope, key=idempotency_key, study_id=study_id, request_digest=digest
            )
            session.add(key)
            session.flush()  # a concurrent request with this key waits here for our commit
    except IntegrityError as e:
        session.rollback()
        if idempotency_key is None:
            raise
        existing = _replay(session, scope, idempotency_key, digest)
        if existing is None:  # the other request rolled back after all: let the client retry
            raise Conflict("a study with this Idempotency-Key is being created; retry") from e
        return existing, False
    # All trials in one executemany (psycopg pipelines it: one round trip, not one per
    # trial). Measured for the largest allowed grid: faster than insertmanyvalues with
    # RETURNING, and far faster than one multi-VALUES statement, whose compile dominates.
    rows = [
        {"study_id": study_id, "number": i, "cell_key": t.cell_key, "seed": t.seed,
         "params": t.model_dump()}
        for i, t in enumerate(spec.trials())
    ]  # fmt: skip
    session.execute(insert(Trial), rows)
    # Optuna's study is created inside our transaction's lifetime: if it fails we roll
    # back, and if our commit fails we delete it, so a failed create leaves nothing.
    optuna_url = settings.resolved_optuna_url
    optuna_store.create_optuna_study(optuna_url, study.optuna_study_name, study_id, spec)
    try:
        session.commit()
    except Exception:
        session.rollback()
        optuna_store.delete_study(optuna_url, study.optuna_study_name)
        raise
    return study, True


_sqlite_quota = threading.Lock()
# Creates at once per API process: each holds a pooled connection (and may wait for its
# owner's lock), so a burst of POSTs must not take the connections every read needs.
CREATES, CREATE_WAIT_SECONDS, LOCK_WAIT = 4, 30.0, "30s"
_creating = threading.BoundedSemaphore(CREATES)


@contextmanager
def _quota_lock(session: Session, scope: str) -> Iterator[None]:
    """Serialize one owner's creates from the quota check to the commit, so concurrent
    POSTs cannot all pass the check: on PostgreSQL a transaction-level advisory lock per
    owner (every API replica sees it; released at commit or rollback), on SQLite (one
    API process, the embedded default) a process lock."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"samsweep-owner:{scope}".encode()).digest()[:8])
        session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
        try:
            session.execute(select(func.pg_advisory_xact_lock(key - 2**63)))
        except OperationalError as e:  # lock_timeout: this owner's other creates are slow
            session.rollback()
            raise Busy("another study of this owner is being created; retry shortly") from e
        yield
        return
    with _sqlite_quota:
        yield


def check_quota(session: Session, settings: Settings, owner: str | None, n_trials: int) -> None:
    """429 when creating `n_trials` more would take `owner` past their unfinished studies
    (SAMSWEEP_MAX_STUDIES_PER_OWNER) or queued-and-running trials
    (SAMSWEEP_MAX_PENDING_TRIALS_PER_OWNER). On an open API (no tokens) every study is
    the anonymous owner's, so the limits bound the whole service."""
    who = Study.owner.is_(None) if owner is None else Study.owner == owner
    studies_, trials = session.execute(
        select(func.count(func.distinct(Trial.study_id)), func.count())
        .join(Study, Study.id == Trial.study_id)
        .where(who, Trial.state.in_((TrialState.QUEUED, TrialState.RUNNING)))
    ).one()
    name = "this API's anonymous owner" if owner is None else f"owner {owner[:80]!r}"
    if studies_ + 1 > settings.max_studies_per_owner:
        raise LimitExceeded(
            f"{name} has {studies_} unfinished studies; SAMSWEEP_MAX_STUDIES_PER_OWNER "
            f"allows {settings.max_studies_per_owner}: wait for one to finish or cancel one"
        )
    if trials + n_trials > settings.max_pending_trials_per_owner:
        raise LimitExceeded(
            f"{name} has {trials} queued or running trials and this study adds "
            f"{n_trials}; SAMSWEEP_MAX_PENDING_TRIALS_PER_OWNER allows "
            f"{settings.max_pending_trials_per_owner}: wait for trials to finish or cancel "
            "a study"
        )


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


def get_study(session: Session, study_id: str, owner: str | None = None) -> Study:
    """The study, or 404; an id that cannot be one (NUL, 5 kB, ...) never reaches the DB."""
    study = session.get(Study, study_id) if STUDY_ID.fullmatch(study_id) else None
    if study is None or (owner is not None and study.owner != owner):
        raise NotFound(f"no study with id {study_id[:64]!r}")
    return study


def cancel_study(session: Session, study: Study) -> None:
    """Mark the study cancelled and its QUEUED trials CANCELLED, in one transaction.

    Running trials see `cancelled_at` at their next epoch boundary (worker/recorder.py)
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


def study_status(study: Study, counts: dict[str, int]) -> StudyStatus:
    finished = sum(counts[s] for s in FINISHED_STATES)
    if study.cancelled_at is not None and finished == study.n_trials:
        return StudyStatus.CANCELLED
    if finished == study.n_trials:
        return StudyStatus.COMPLETE
    if counts[TrialState.RUNNING] or finished:
        return StudyStatus.RUNNING
    return StudyStatus.QUEUED


@dataclass(frozen=True)
class Snapshot:
    """A study's trials at one moment: counts per state (every state present), the first
    start and last finish, and two digests that reads are cached and ETagged on:

    - `results` changes whenever the report can: a trial is claimed, re-queued, finishes
      (with its metrics or error) or is cancelled, the study is cancelled, its stored
      spec is rewritten (by a migration, say). Reports, /best and every plot but the
      curves are keyed on it, so a running study's epochs do not churn them.
    - `version` changes on those and on every epoch recorded or heartbeat: the worker
      writes `heartbeat_at` with each epoch's row (a resumed attempt re-recording an
      earlier epoch included), so its maximum moves whenever curves can have changed.
      The curves plot is keyed on it.
    """

    counts: dict[str, int]
    timings: dict[str, Any]
    results: str
    version: str


def snapshot(session: Session, study: Study) -> Snapshot:
    """One grouped query over the study's trials (their (study_id, number) index)."""
    counts = {s.value: 0 for s in TrialState}
    started = last = None
    results = hashlib.sha256(f"{study.id}|{study.cancelled_at}|".encode())
    results.update(json.dumps(study.spec, sort_keys=True).encode())  # bounded: a few KB
    rows = session.execute(
        select(
            Trial.state,
            func.count(),
            func.min(Trial.started_at),
            func.max(Trial.finished_at),
            func.coalesce(func.sum(Trial.attempts), 0),
            func.coalesce(func.sum(Trial.epoch), 0),
            func.max(Trial.heartbeat_at),
        )
        .where(Trial.study_id == study.id)
        .group_by(Trial.state)
        .order_by(Trial.state)
    )
    live = []
    for state, n, first, final, attempts, epochs, beat in rows:
        counts[state] = n
        started = first if started is None or (first and first < started) else started
        last = final if last is None or (final and final > last) else last
        results.update(f"|{state}:{n}:{final}:{attempts}".encode())
        live.append(f"|{epochs}:{beat}")
    version = hashlib.sha256(results.digest() + "".join(live).encode())
    timings = {"created_at": study.created_at, "started_at": started, "last_finished_at": last}
    return Snapshot(counts, timings, results.hexdigest()[:32], version.hexdigest()[:32])


def best_trial(session: Session, study_id: str) -> Trial | None:
    # A complete trial always has its value; were one without, PostgreSQL's DESC puts
    # NULL first, so the filter keeps it from being "best".
    return session.scalar(
        select(Trial)
        .where(
            Trial.study_id == study_id,
            Trial.state == TrialState.COMPLETE,
            Trial.value.is_not(None),
        )
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


def stored_spec(study: Study) -> StudySpec:
    """The study's spec as stored; a spec stored before a stricter rule is a 409 naming
    the rule, never a 500."""
    try:
        return StudySpec.model_validate(study.spec)
    except ValidationError as e:
        raise Conflict(f"the stored spec no longer validates: {e}".splitlines()[0]) from e


def study_report(
    session: Session, study: Study, version: str | None = None, cache: VersionedCache | None = None
) -> Report:
    """The generalization-gap report (samsweep.core.report) over every trial of the study;
    with a version and a cache, built once per study version."""
    if version is None or cache is None:
        return _build_report(session, study)
    return cache.get_or_compute(
        (study.id, version, "report"), lambda: _build_report(session, study)
    )


def _build_report(session: Session, study: Study) -> Report:
    rows = session.execute(
        select(Trial.params, Trial.state, Trial.metrics, Trial.error)
        .where(Trial.study_id == study.id)
        .order_by(Trial.number)
    )
    return build_report(stored_spec(study), [trial_record(*row) for row in rows])


def trial_record(
    params: dict[str, Any], state: str, metrics: dict[str, Any] | None, error: str | None
) -> TrialRecord:
    """A stored trial as the report reads it; params stored before a stricter rule are a
    409 naming the rule, as a stale spec is (stored_spec), never a 500."""
    try:
        parsed = TrialParams.model_validate(params)
    except ValidationError as e:
        raise Conflict(f"a stored trial no longer validates: {e}".splitlines()[0]) from e
    return TrialRecord(parsed, TrialState(state), metrics, error)
