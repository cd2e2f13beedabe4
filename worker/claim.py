"""The claim: who trains a trial, decided by the database.

A task claims its row with one atomic `UPDATE ... WHERE state = 'QUEUED'`; a second
delivery of the same task finds the row taken and returns without training. Every
later write is guarded by the claim token (`write_claimed`), so a worker that lost
its claim can never overwrite another's result (docs/DESIGN.md §5), nor add an epoch
to its curves.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from samsweep.core.db import Study, Trial, curves_for, new_id, put_epochs, rows_updated, utcnow
from samsweep.core.spec import StudySpec, TrialParams
from samsweep.core.states import TrialState
from worker.retry import with_db_retry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A trial this worker holds: what to train, and the token its writes carry."""

    trial_id: int
    token: str
    spec: StudySpec
    params: TrialParams
    optuna_study_name: str
    study_id: str
    curves: list[dict[str, Any]]  # epochs an earlier attempt recorded (a resume keeps them)
    attempt: int  # 1 for the first run; more after a lost worker
    # (id, number) of the Optuna trial the dispatcher asked a sampler for, on a sampler's
    # configuration's first seed, first attempt: it records this trial
    asked: tuple[int, int] | None = None

    @property
    def epochs(self) -> int:
        """The epochs this trial trains (a doubled baseline's twice the spec's)."""
        return self.spec.epochs_for(self.params.rho)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(sessions: sessionmaker[Session], trial_id: int) -> Claim | None:
    """Take the trial if it is QUEUED; None if someone else has it, it is finished, or
    its study has `max_concurrent_trials` running already (`at_bound`)."""
    token = new_id()
    now = utcnow()
    with sessions() as session:
        if at_bound(session, trial_id):
            return None
        taken = rows_updated(
            session,
            update(Trial)
            .where(Trial.id == trial_id, Trial.state == TrialState.QUEUED)
            .values(
                state=TrialState.RUNNING,
                claim_token=token,
                attempts=Trial.attempts + 1,
                worker=worker_name(),
                started_at=now,
                heartbeat_at=now,
            ),
        )
        session.commit()
        if taken != 1:
            return None
        trial = session.get(Trial, trial_id)
        if trial is None:  # its study was deleted between the claim and this read
            return None
        study = trial.study
        try:
            spec = StudySpec.model_validate(study.spec)
            params = TrialParams.model_validate(trial.params)
        except ValidationError as e:
            # Stored before a stricter spec existed: this trial cannot run. FAIL it with
            # the reason now, never leave it RUNNING for the sweeper to call "worker lost"
            # (tests/worker/test_claim.py).
            reason = f"error: the stored spec no longer validates: {e}".splitlines()[0]
            session.execute(
                update(Trial)
                .where(Trial.id == trial_id, Trial.claim_token == token)
                .values(state=TrialState.FAILED, finished_at=utcnow(), error=reason)
            )
            session.commit()
            log.error("trial %s: %s", trial_id, e)
            return None
        return Claim(
            trial_id=trial_id,
            token=token,
            spec=spec,
            params=params,
            optuna_study_name=study.optuna_study_name,
            study_id=study.id,
            curves=curves_for(session, [trial_id])[trial_id],
            attempt=trial.attempts,
            asked=(trial.optuna_trial_id, trial.optuna_trial_number or 0)
            if trial.attempts == 1 and trial.optuna_trial_id is not None
            else None,
        )


def at_bound(session: Session, trial_id: int) -> bool:
    """Whether the trial's study has `max_concurrent_trials` trials running already. Then
    the trial goes back to the dispatcher (marked unsent, still QUEUED), which sends it
    again when a place frees. The dispatcher never sends past the bound; this holds it
    when the bound was lowered (PATCH) after trials were sent. The study's row is locked
    until the claim's commit (PostgreSQL), so two claims of one study take turns; SQLite
    writers take turns anyway."""
    found = session.execute(
        select(Study.id, Study.max_concurrent_trials)
        .join(Trial, Trial.study_id == Study.id)
        .where(Trial.id == trial_id, Trial.state == TrialState.QUEUED)
        .with_for_update(of=Study)
    ).first()
    if found is None or found.max_concurrent_trials is None:
        return False
    running = session.scalar(
        select(func.count()).where(Trial.study_id == found.id, Trial.state == TrialState.RUNNING)
    )
    if (running or 0) < found.max_concurrent_trials:
        return False
    session.execute(
        update(Trial)
        .where(Trial.id == trial_id, Trial.state == TrialState.QUEUED)
        .values(enqueued_at=None)
    )
    session.commit()
    log.info("trial %s: its study runs %s trials, its max_concurrent_trials: back to the "
             "dispatcher", trial_id, running)  # fmt: skip
    return True


def write_claimed(
    sessions: sessionmaker[Session],
    c: Claim,
    epochs: Iterable[dict[str, Any]] = (),
    drop_epochs: Collection[int] = (),
    **values: Any,
) -> bool:
    """Write to the trial only while we still hold the claim; False if we lost it.

    `epochs` are per-epoch records to insert or replace, `drop_epochs` epochs whose
    rows to delete (samsweep.core.db.put_epochs). They are written in the transaction whose
    UPDATE of the trial row found our token, so only while we hold the claim: on
    PostgreSQL that UPDATE locks the row until the commit, and a re-queue (which
    changes the token) waits for it; on SQLite writers take turns."""
    with sessions() as session:
        n = rows_updated(
            session,
            update(Trial)
            .where(Trial.id == c.trial_id, Trial.claim_token == c.token)
            .values(**values),
        )
        if n == 1:
            put_epochs(session, c.trial_id, epochs, drop_epochs)
        session.commit()
    return n == 1


def finish(
    sessions: sessionmaker[Session],
    c: Claim,
    state: TrialState,
    retry: float,
    epochs: Iterable[dict[str, Any]] = (),
    drop_epochs: Collection[int] = (),
    **values: Any,
) -> None:
    """Record the trial's final state once (while we hold the claim), with any epoch
    rows to correct, retrying while the database is down."""
    epochs = list(epochs)  # a retry writes them again

    def write() -> None:
        done = write_claimed(
            sessions, c, epochs, drop_epochs, state=state, finished_at=utcnow(), **values
        )
        if not done:
            log.warning("trial %s: claim lost before recording %s", c.trial_id, state)

    with_db_retry(write, f"record trial {c.trial_id}", retry)


def trial_deleted(sessions: sessionmaker[Session], c: Claim) -> bool:
    """Whether the trial's row is gone (its study was deleted: DELETE /studies/{id})."""
    with sessions() as session:
        return session.scalar(select(Trial.id).where(Trial.id == c.trial_id)) is None


def study_cancelled(sessions: sessionmaker[Session], c: Claim) -> bool:
    with sessions() as session:
        return session.scalar(select(Study.cancelled_at).where(Study.id == c.study_id)) is not None
