"""The writes behind the routes: create a study (its rows, its Optuna study, quotas and
Idempotency-Key), grow one (PATCH), retry its failed trials, cancel it, delete it. The
reads are service/reads.py; sending trials to the broker, service/dispatch.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from samsweep.core import optuna_store
from samsweep.core.admission import AdmissionError, check_admission
from samsweep.core.db import IdempotencyKey, Study, Trial, new_id, rows_updated, utcnow
from samsweep.core.draws import budgets
from samsweep.core.settings import Settings
from samsweep.core.spec import PatchError, StudySpec, TrialParams, patched
from samsweep.core.states import TrialState
from service.errors import (
    Busy,
    Conflict,
    IdempotencyMismatch,
    InvalidSpec,
    LimitExceeded,
    NotFound,
    body_errors,
)
from service.reads import stored_spec

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
        sampler=spec.sampler.name if spec.sampler.searches else None,
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
    _insert_trials(session, study_id, spec.trials())
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


def _insert_trials(
    session: Session, study_id: str, trials: list[TrialParams], first: int = 0
) -> None:
    """One row per trial, numbered from `first`, all in one executemany (psycopg pipelines
    it: one round trip, not one per trial). Measured for the largest allowed grid: faster
    than insertmanyvalues with RETURNING, and far faster than one multi-VALUES statement,
    whose compile dominates."""
    if not trials:
        return
    rows = [
        {"study_id": study_id, "number": first + i, "cell_key": t.cell_key, "seed": t.seed,
         "params": t.stored()}
        for i, t in enumerate(trials)
    ]  # fmt: skip
    session.execute(insert(Trial), rows)


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


def check_quota(
    session: Session,
    settings: Settings,
    owner: str | None,
    n_trials: int,
    adds_study: bool = True,
) -> None:
    """429 when queueing `n_trials` more (in a new study, or in one that has nothing queued
    or running when `adds_study`) would take `owner` past their unfinished studies
    (SAMSWEEP_MAX_STUDIES_PER_OWNER) or queued-and-running trials
    (SAMSWEEP_MAX_PENDING_TRIALS_PER_OWNER). On an open API (no tokens) every study is
    the anonymous owner's, so the limits bound the whole service. A sampler's study
    counts the configurations it has still to draw as queued trials."""
    who = Study.owner.is_(None) if owner is None else Study.owner == owner
    pending = session.execute(
        select(Trial.study_id, func.count())
        .join(Study, Study.id == Trial.study_id)
        .where(who, Trial.state.in_((TrialState.QUEUED, TrialState.RUNNING)))
        .group_by(Trial.study_id)
    ).all()
    unfinished, trials = {sid for sid, _ in pending}, sum(n for _, n in pending)
    for sid, room in budgets(session, who):
        unfinished.add(sid)
        trials += room
    studies_ = len(unfinished)
    name = "this API's anonymous owner" if owner is None else f"owner {owner[:80]!r}"
    if adds_study and studies_ + 1 > settings.max_studies_per_owner:
        raise LimitExceeded(
            f"{name} has {studies_} unfinished studies; SAMSWEEP_MAX_STUDIES_PER_OWNER "
            f"allows {settings.max_studies_per_owner}: wait for one to finish or cancel one"
        )
    if trials + n_trials > settings.max_pending_trials_per_owner:
        raise LimitExceeded(
            f"{name} has {trials} queued or running trials and this study adds "
            f"{n_trials} more; SAMSWEEP_MAX_PENDING_TRIALS_PER_OWNER allows "
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


def patch_digest(study_id: str, patch: Mapping[str, Any]) -> str:
    """SHA-256 of a PATCH: the study and the body as sent, whatever its key order."""
    canonical = json.dumps({"study": study_id, "patch": patch}, sort_keys=True,
                           separators=(",", ":"))  # fmt: skip
    return hashlib.sha256(canonical.encode()).hexdigest()


def extend_study(
    session: Session,
    settings: Settings,
    study_id: str,
    patch: Mapping[str, Any],
    owner: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[Study, int, bool]:
    """Apply a PATCH (samsweep.core.spec.patched): create a trial for every new (cell,
    seed), numbered after the study's last (a sampler's study: a larger budget, its new
    trials drawn as places free), and store the grown spec, its n_trials, its priority
    and bound; the trials that exist stay exactly as they are. Returns (study, trials
    added, replayed). Validated as a new study is (the grid's maximum, the data,
    the owner's quotas: 4xx and nothing changes), one patch at a time per owner; with an
    Idempotency-Key, a replay changes nothing more and another body with it is a 422."""
    scope, digest = owner or "", patch_digest(study_id, patch)
    study = _owned(session, study_id, owner)
    new = _patched(settings, study, patch)  # the checks that read files, outside the lock
    session.rollback()
    if not _creating.acquire(timeout=CREATE_WAIT_SECONDS):
        raise Busy(f"{CREATES} studies are being created or changed; retry shortly")
    try:
        with _quota_lock(session, scope):
            if idempotency_key is not None and _replay(session, scope, idempotency_key, digest):
                return _owned(session, study_id, owner), 0, True
            study = _owned(session, study_id, owner)  # as it is now, under the lock
            if _patched(settings, study, patch, admit=False) != new:
                raise Conflict("the study changed while this patch was checked; retry")
            if study.cancelled_at is not None:
                raise Conflict(
                    "the study is cancelled: POST /studies/{id}/retry resumes it, then it can grow"
                )
            old = stored_spec(study)
            if new.search != old.search and (
                optuna_store.param_space(settings.resolved_optuna_url, study.optuna_study_name)
                < optuna_store.GROWABLE
            ):
                raise Conflict(
                    "this study was created before grids could grow (its Optuna study "
                    "records each axis as a fixed set of choices): it can take more seeds, "
                    "not new grid values; post a new study for those",
                    field="search",
                )
            existing = {
                (key, seed)
                for key, seed in session.execute(
                    select(Trial.cell_key, Trial.seed).where(Trial.study_id == study.id)
                )
            }
            added = [t for t in new.trials() if (t.cell_key, t.seed) not in existing]
            # a sampler's study gets budget, its trials drawn as places free (dispatch.py)
            more = new.n_trials - study.n_trials if new.sampler.searches else len(added)
            grows = bool(more) and not _unfinished(session, study.id)  # runs again
            check_quota(session, settings, owner, more, adds_study=grows)
            _insert_trials(session, study.id, added, first=study.n_trials)
            study.spec = new.model_dump(mode="json")
            study.n_trials = new.n_trials
            study.priority = new.priority
            study.max_concurrent_trials = new.max_concurrent_trials
            if idempotency_key is not None:
                session.add(IdempotencyKey(owner=scope, key=idempotency_key, study_id=study.id,
                                           request_digest=digest))  # fmt: skip
            session.commit()
            return study, more, False
    finally:
        _creating.release()


def _owned(session: Session, study_id: str, owner: str | None) -> Study:
    """The study, read afresh, or 404 (another owner's too)."""
    study = session.get(Study, study_id, populate_existing=True)
    if study is None or (owner is not None and study.owner != owner):
        raise NotFound(f"no study with id {study_id[:64]!r}")
    return study


def _patched(
    settings: Settings, study: Study, patch: Mapping[str, Any], admit: bool = True
) -> StudySpec:
    """The study's spec after `patch`, validated as a new study's is (4xx if not)."""
    try:
        new = patched(stored_spec(study), patch)
    except PatchError as e:
        raise InvalidSpec(str(e), field=e.field) from e
    except ValidationError as e:
        raise body_errors(e) from None
    if admit:
        try:
            check_admission(new, settings.data_dir, settings.max_grid_trials)
        except AdmissionError as e:
            raise InvalidSpec(str(e), field=e.field) from e
    return new


def _unfinished(session: Session, study_id: str) -> bool:
    """Whether the study has a trial queued or running, or configurations to draw."""
    queued = session.scalar(
        select(func.count()).where(
            Trial.study_id == study_id,
            Trial.state.in_((TrialState.QUEUED, TrialState.RUNNING)),
        )
    )
    return bool(queued) or bool(budgets(session, Study.id == study_id))


RETRIED = (TrialState.FAILED, TrialState.CANCELLED)


def retry_study(
    session: Session, settings: Settings, study: Study, owner: str | None, infeasible: bool = False
) -> int:
    """Queue every FAILED and CANCELLED trial of the study again (INFEASIBLE ones too with
    `infeasible`: they ran out of memory and will again on the same hardware), and
    resume the study if it was cancelled. Each gets a fresh attempt (its `attempts` goes
    up when a worker claims it; one from a checkpoint resumes there). What finished
    stays. Returns how many were queued; within the owner's quotas (429 if not)."""
    states = (*RETRIED, TrialState.INFEASIBLE) if infeasible else RETRIED
    with _quota_lock(session, owner or ""):
        n = session.scalar(
            select(func.count()).where(Trial.study_id == study.id, Trial.state.in_(states))
        ) or 0  # fmt: skip
        unfinished = _unfinished(session, study.id)
        check_quota(session, settings, owner, n, adds_study=bool(n) and not unfinished)
        session.execute(update(Study).where(Study.id == study.id).values(cancelled_at=None))
        n = rows_updated(
            session,
            update(Trial)
            .where(Trial.study_id == study.id, Trial.state.in_(states))
            .values(state=TrialState.QUEUED, enqueued_at=None, claim_token=None,
                    finished_at=None, error=None, value=None, metrics=None),
        )  # fmt: skip
        session.commit()
    session.refresh(study)
    return n


def delete_study(session: Session, settings: Settings, study: Study) -> None:
    """Remove the study: its rows (trials, their epochs, its Idempotency-Keys), its
    Optuna study and its checkpoints. It is cancelled first, so nothing more is sent and
    its running trials stop at their next epoch (the worker also removes the checkpoint
    it holds: worker/runner.py); then Optuna's study goes, then the rows. A DELETE that
    fails midway leaves the study to delete again, never an Optuna study without it."""
    session.execute(
        update(Study)
        .where(Study.id == study.id, Study.cancelled_at.is_(None))
        .values(cancelled_at=utcnow())
    )
    session.commit()
    # gone already: an earlier DELETE that failed after it, or optuna-dashboard's
    with contextlib.suppress(KeyError):
        optuna_store.delete_study(settings.resolved_optuna_url, study.optuna_study_name)
    session.execute(delete(Study).where(Study.id == study.id))
    session.commit()
    # The id is 32 hex digits (service/reads.py get_study): a name, never a path.
    shutil.rmtree(settings.resolved_checkpoint_dir / study.id, ignore_errors=True)
    log.info("study %s deleted", study.id)
