"""The writes behind the routes: create a study (its rows, its Optuna study, quotas and
Idempotency-Key) and cancel one. The reads are service/reads.py; sending the new
study's trials to the broker, service/dispatch.py."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from samsweep.core import optuna_store
from samsweep.core.admission import AdmissionError, check_admission
from samsweep.core.db import IdempotencyKey, Study, Trial, new_id, utcnow
from samsweep.core.settings import Settings
from samsweep.core.spec import StudySpec
from samsweep.core.states import TrialState
from service.errors import (
    Busy,
    Conflict,
    IdempotencyMismatch,
    InvalidSpec,
    LimitExceeded,
)

log = logging.getLogger(__name__)


def request_digest(spec: StudySpec) -> str:
    """SHA-256 of the validated spec: the same study whatever the key order or defaults.
    The dispatcher's fields are left out at their defaults, so a key recorded before they
    existed still replays."""
    fields = spec.model_dump(mode="json")
    for name in ("priority", "max_concurrent_trials"):
        if fields[name] == StudySpec.model_fields[name].default:
            del fields[name]
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
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
    the broker afterwards (service/dispatch.py), off the request. A refused spec, or one
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
        priority=spec.priority,
        max_concurrent_trials=spec.max_concurrent_trials,
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
