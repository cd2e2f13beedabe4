"""Run one trial: claim its row, train it, report to Optuna, record the result once.

The database decides who trains a trial. A task claims its row with one atomic
`UPDATE ... WHERE state = 'QUEUED'`; a second delivery of the same task finds the
row taken and returns without training. Every later write is guarded by the claim
token, so a worker that lost its claim can never overwrite another's result.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from samsweep import optuna_store
from samsweep.catalog import cifar10_dir, resolve_data_path
from samsweep.db import Study, Trial, TrialState, new_id, session_factory, utcnow
from samsweep.settings import Settings
from samsweep.spec import Cell, StudySpec

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stop(Exception):
    """Raised from the epoch callback to stop training (cancelled, or claim lost)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Claim:
    trial_id: int
    token: str
    spec: StudySpec
    cell: Cell
    optuna_study_name: str
    study_id: str
    previous_optuna_trial_id: int | None  # an earlier attempt's, left RUNNING by a lost worker


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def with_db_retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Retry `fn` with exponential backoff while the database refuses connections."""
    delay = 0.5
    for i in range(attempts):
        try:
            return fn()
        except OperationalError as e:
            if i == attempts - 1:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1fs", what, e.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
    raise AssertionError("unreachable")


def claim(sessions: sessionmaker, trial_id: int) -> Claim | None:
    """Take the trial if it is QUEUED; None if someone else has it or it is finished."""
    token = new_id()
    now = utcnow()
    with sessions() as session:
        taken = session.execute(
            update(Trial)
            .where(Trial.id == trial_id, Trial.state == TrialState.QUEUED)
            .values(
                state=TrialState.RUNNING,
                claim_token=token,
                attempts=Trial.attempts + 1,
                worker=worker_name(),
                started_at=now,
                heartbeat_at=now,
                epoch=0,
                curves=[],
            )
        ).rowcount
        session.commit()
        if taken != 1:
            return None
        trial = session.get(Trial, trial_id)
        study = trial.study
        return Claim(
            trial_id=trial_id,
            token=token,
            spec=StudySpec.model_validate(study.spec),
            cell=Cell.model_validate(trial.params),
            optuna_study_name=study.optuna_study_name,
            study_id=study.id,
            previous_optuna_trial_id=trial.optuna_trial_id,
        )


def _guarded_update(session: Session, c: Claim, **values: Any) -> bool:
    """Write to the trial only while we still hold the claim; False if we lost it."""
    n = session.execute(
        update(Trial).where(Trial.id == c.trial_id, Trial.claim_token == c.token).values(**values)
    ).rowcount
    session.commit()
    return n == 1


class Heartbeat(threading.Thread):
    """Touches `heartbeat_at` every period, so a dead worker's trial can be detected."""

    def __init__(self, sessions: sessionmaker, c: Claim, period: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{c.trial_id}")
        self.sessions, self.claim, self.period = sessions, c, period
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                with self.sessions() as session:
                    if not _guarded_update(session, self.claim, heartbeat_at=utcnow()):
                        self.lost.set()
                        return
            except OperationalError as e:  # a database blip: the next beat may get through
                log.warning("heartbeat for trial %s failed: %s", self.claim.trial_id, e.orig)


def trial_config(c: Claim, settings: Settings, device: str):
    from trainer import TrialConfig

    spec, cell = c.spec, c.cell
    path = None
    if spec.dataset.path is not None:
        path = str(cifar10_dir(resolve_data_path(settings.data_dir, spec.dataset.path)))
    return TrialConfig(
        dataset=spec.dataset.name,
        dataset_path=path,
        label_noise=spec.dataset.label_noise,
        val_fraction=spec.dataset.val_fraction,
        model=spec.model.name,
        rho=cell.rho,
        batch_size=cell.batch_size,
        base_optimizer=cell.base_optimizer,
        epochs=spec.train.epochs,
        lr=spec.train.lr,
        momentum=spec.train.momentum,
        nesterov=spec.train.nesterov,
        weight_decay=spec.train.weight_decay,
        lr_scaling=spec.train.lr_scaling,
        base_batch_size=spec.train.base_batch_size,
        warmup_epochs=spec.train.warmup_epochs,
        schedule=spec.train.schedule,
        seed=cell.seed,
        device=device,
    )


def resolve_device(setting: str, threads: int = 0) -> str:
    import torch

    if threads:  # several CPU slots on one host must not each take every core
        torch.set_num_threads(threads)
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def run_trial(trial_id: int, settings: Settings) -> str:
    """Train one trial end to end; returns a one-word outcome for the task log."""
    sessions = session_factory(settings.resolved_database_url)
    c = with_db_retry(lambda: claim(sessions, trial_id), f"claim trial {trial_id}")
    if c is None:
        log.info("trial %s is not QUEUED (taken or finished): not training it again", trial_id)
        return "skipped"
    optuna_url = settings.resolved_optuna_url
    if c.previous_optuna_trial_id is not None:
        optuna_store.fail_trial(optuna_url, c.previous_optuna_trial_id, "worker lost; re-run")
    optuna_id, optuna_number = optuna_store.start_trial(
        optuna_url, c.optuna_study_name, c.spec, c.cell
    )
    with sessions() as session:
        _guarded_update(session, c, optuna_trial_id=optuna_id, optuna_trial_number=optuna_number)
    heartbeat = Heartbeat(sessions, c, settings.heartbeat_seconds)
    heartbeat.start()
    try:
        return _train_and_record(c, settings, sessions, optuna_url, optuna_id, heartbeat)
    finally:
        heartbeat.stopped.set()


def _train_and_record(c, settings, sessions, optuna_url, optuna_id, heartbeat) -> str:
    import trainer

    curves: list[dict[str, Any]] = []
    objective_key = c.spec.objective

    def on_epoch(m) -> None:
        curves.append(m.to_dict())
        optuna_store.report(optuna_url, optuna_id, m.epoch, getattr(m, objective_key))
        with sessions() as session:
            kept = _guarded_update(
                session, c, epoch=m.epoch, curves=list(curves), heartbeat_at=utcnow()
            )
            if not kept or heartbeat.lost.is_set():
                raise Stop("claim lost")
            if session.scalar(select(Study.cancelled_at).where(Study.id == c.study_id)):
                raise Stop("cancelled")

    device = resolve_device(settings.device, settings.torch_threads)
    try:
        result = trainer.fit(trial_config(c, settings, device), on_epoch=on_epoch)
    except Stop as e:
        if e.reason == "cancelled":
            _finish(sessions, c, TrialState.CANCELLED, error="cancelled")
            optuna_store.fail_trial(optuna_url, optuna_id, "cancelled")
        return e.reason
    except trainer.TrainingError as e:
        _finish(sessions, c, TrialState.FAILED, error=f"{e.reason}: {e}")
        optuna_store.fail_trial(optuna_url, optuna_id, e.reason)
        return e.reason
    except Exception as e:
        log.exception("trial %s failed", c.trial_id)
        _finish(sessions, c, TrialState.FAILED, error=f"error: {type(e).__name__}: {e}")
        optuna_store.fail_trial(optuna_url, optuna_id, f"error: {type(e).__name__}")
        return "error"

    metrics = {k: v for k, v in result.to_dict().items() if k != "history"}
    metrics["device"] = device
    value = metrics[objective_key]
    optuna_store.complete_trial(optuna_url, optuna_id, value, metrics)
    _finish(sessions, c, TrialState.COMPLETE, value=value, metrics=metrics, curves=curves)
    return "complete"


def _finish(sessions: sessionmaker, c: Claim, state: TrialState, **values: Any) -> None:
    def write() -> None:
        with sessions() as session:
            if not _guarded_update(session, c, state=state, finished_at=utcnow(), **values):
                log.warning("trial %s: claim lost before recording %s", c.trial_id, state)

    with_db_retry(write, f"record trial {c.trial_id}")
