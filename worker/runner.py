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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from optuna.exceptions import StorageInternalError
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

from samsweep import optuna_store
from samsweep.catalog import contained_dataset_dir
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
    curves: list[dict[str, Any]]  # epochs an earlier attempt recorded (a resume keeps them)
    attempt: int  # 1 for the first run; more after a lost worker


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def with_db_retry(fn: Callable[[], T], what: str, budget: float = 120.0) -> T:
    """Call `fn`, retrying with exponential backoff (0.25 s doubling to 10 s) while the
    database is unreachable; re-raises the last error once `budget` seconds have
    passed. Optuna wraps the same connection errors in StorageInternalError, so both
    are retried; nothing else is (tests/test_faults.py: PostgreSQL refusing for 8 s)."""

    def warn(state: RetryCallState) -> None:
        log.warning(
            "%s: database unavailable (%s); retrying in %.1fs",
            what,
            state.outcome.exception() if state.outcome else None,
            state.upcoming_sleep,
        )

    retrying = Retrying(
        retry=retry_if_exception_type((OperationalError, StorageInternalError)),
        wait=wait_exponential(multiplier=0.25, min=0.25, max=10.0),
        stop=stop_before_delay(budget),  # never sleeps past the budget
        before_sleep=warn,
        reraise=True,
    )
    return retrying(fn)


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
            )
        ).rowcount
        session.commit()
        if taken != 1:
            return None
        trial = session.get(Trial, trial_id)
        study = trial.study
        try:
            spec, cell = StudySpec.model_validate(study.spec), Cell.model_validate(trial.params)
        except ValidationError as e:
            # Stored before a stricter spec existed: this trial cannot run. FAIL it with
            # the reason now, never leave it RUNNING for the sweeper to call "worker lost".
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
            cell=cell,
            optuna_study_name=study.optuna_study_name,
            study_id=study.id,
            curves=list(trial.curves or []),
            attempt=trial.attempts,
        )


def _write(sessions: sessionmaker, c: Claim, **values: Any) -> bool:
    """Write to the trial only while we still hold the claim; False if we lost it."""
    with sessions() as session:
        n = session.execute(
            update(Trial)
            .where(Trial.id == c.trial_id, Trial.claim_token == c.token)
            .values(**values)
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
                if not _write(self.sessions, self.claim, heartbeat_at=utcnow()):
                    self.lost.set()
                    return
            except OperationalError as e:  # a database blip: the next beat may get through
                log.warning("heartbeat for trial %s failed: %s", self.claim.trial_id, e.orig)


def trial_config(c: Claim, settings: Settings, device: str, checkpoint: Path | None = None):
    from trainer import TrialConfig

    spec, cell = c.spec, c.cell
    path = None
    if spec.dataset.path is not None:  # checked again here: files may change after the API
        path = str(contained_dataset_dir(settings.data_dir, spec.dataset.name, spec.dataset.path))
    return TrialConfig(
        dataset=spec.dataset.name,
        dataset_path=path,
        label_noise=spec.dataset.label_noise,
        val_fraction=spec.dataset.val_fraction,
        augment=spec.dataset.augment,
        model=spec.model.name,
        model_depth=spec.model.depth,
        model_width=spec.model.width,
        dropout=spec.model.dropout,
        rho=cell.rho,
        batch_size=cell.batch_size,
        base_optimizer=cell.base_optimizer,
        sam_variant=cell.sam_variant or "sam",  # rho = 0 never builds SAM
        m=cell.m,
        epochs=spec.train.epochs,
        lr=spec.train.lr,
        momentum=spec.train.momentum,
        nesterov=spec.train.nesterov,
        weight_decay=spec.train.weight_decay,
        grad_clip=spec.train.grad_clip,
        label_smoothing=spec.train.label_smoothing,
        lr_scaling=spec.train.lr_scaling,
        base_batch_size=spec.train.base_batch_size,
        warmup_epochs=spec.train.warmup_epochs,
        schedule=spec.train.schedule,
        seed=cell.seed,
        device=device,
        precision=_precision(spec.train.precision, device),
        channels_last=device.startswith("cuda"),  # every model here is convolutional
        checkpoint_path=None if checkpoint is None else str(checkpoint),
        sharpness_samples=spec.sharpness.samples,
        sharpness_rho=spec.sharpness.rho,
        sharpness_steps=spec.sharpness.ascent_steps,
        hessian_iters=spec.sharpness.hessian_iters,
    )


def _precision(setting: str, device: str) -> str:
    """auto: bf16 autocast on CUDA (tensor cores), fp32 on the CPU (bf16 is slow there)."""
    if setting == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return setting


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
    retry = settings.db_retry_seconds
    c = with_db_retry(lambda: claim(sessions, trial_id), f"claim trial {trial_id}", retry)
    if c is None:
        log.info("trial %s is not QUEUED (taken or finished): not training it again", trial_id)
        return "skipped"
    try:
        return _run_claimed(c, settings, sessions)
    except (OperationalError, StorageInternalError):
        raise  # the database stayed down past the retry budget: the sweeper re-runs it
    except Exception as e:
        # Anything else is this trial's real failure (its Optuna study was deleted, say):
        # record it as the reason, never leave the row RUNNING for the sweeper to call
        # "worker lost" while this worker is alive.
        log.exception("trial %s failed outside training", trial_id)
        _finish(sessions, c, TrialState.FAILED, retry, error=f"error: {type(e).__name__}: {e}")
        return "error"


def _run_claimed(c: Claim, settings: Settings, sessions: sessionmaker) -> str:
    trial_id, retry = c.trial_id, settings.db_retry_seconds
    url = settings.resolved_optuna_url
    earlier = None
    if c.attempt > 1:  # only a re-run can find Optuna trials of earlier attempts
        earlier = with_db_retry(
            lambda: optuna_store.settle_earlier_attempts(url, c.optuna_study_name, trial_id),
            "settle earlier attempts",
            retry,
        )
    if earlier is not None:  # recorded in Optuna, lost before our row: adopt, never retrain
        metrics = {k: v for k, v in earlier.user_attrs.items() if k not in optuna_store.BOOKKEEPING}
        _finish(sessions, c, TrialState.COMPLETE, retry, value=earlier.value, metrics=metrics)
        return "adopted"
    optuna_id, optuna_number = with_db_retry(
        lambda: optuna_store.start_trial(url, c.optuna_study_name, c.spec, c.cell, trial_id),
        "create the Optuna trial",
        retry,
    )
    with_db_retry(
        lambda: _write(sessions, c, optuna_trial_id=optuna_id, optuna_trial_number=optuna_number),
        "record the Optuna trial",
        retry,
    )
    heartbeat = Heartbeat(sessions, c, settings.heartbeat_seconds)
    heartbeat.start()
    try:
        return _train_and_record(c, settings, sessions, optuna_id, heartbeat)
    finally:
        heartbeat.stopped.set()


def checkpoint_path(settings: Settings, c: Claim) -> Path:
    return settings.resolved_checkpoint_dir / c.study_id / f"trial-{c.trial_id}.pt"


def _train_and_record(c: Claim, settings: Settings, sessions, optuna_id: int, heartbeat) -> str:
    import trainer

    url, retry, objective = (
        settings.resolved_optuna_url,
        settings.db_retry_seconds,
        c.spec.objective,
    )
    curves = list(c.curves)  # an earlier attempt's epochs, kept up to where it resumes
    reported: set[int] = set()

    def report_epochs() -> None:
        # On a resumed run the earlier epochs go to the new Optuna trial too.
        for e in curves:
            if e["epoch"] not in reported:
                with_db_retry(
                    lambda e=e: optuna_store.report(url, optuna_id, e["epoch"], e.get(objective)),
                    "report an epoch",
                    retry,
                )
                reported.add(e["epoch"])

    def on_epoch(m) -> None:
        nonlocal curves
        curves = [e for e in curves if e["epoch"] < m.epoch] + [m.to_dict()]
        report_epochs()
        values = {"epoch": m.epoch, "curves": curves, "heartbeat_at": utcnow()}
        kept = with_db_retry(lambda: _write(sessions, c, **values), "record an epoch", retry)
        if not kept or heartbeat.lost.is_set():
            raise Stop("claim lost")
        if with_db_retry(lambda: _cancelled(sessions, c), "check for cancel", retry):
            raise Stop("cancelled")

    ckpt = checkpoint_path(settings, c)
    device, outcome = settings.device, "complete"
    try:  # the set-up too: a dataset refused here fails the Optuna trial as well
        device = resolve_device(settings.device, settings.torch_threads)
        config = trial_config(c, settings, device, ckpt)
        result = trainer.fit(config, on_epoch=on_epoch)
    except Stop as e:
        if e.reason != "cancelled":
            return e.reason  # the claim went to another worker: it owns the trial now
        outcome, state, error = "cancelled", TrialState.CANCELLED, "cancelled"
    except trainer.TrainingError as e:
        outcome, state, error = e.reason, TrialState.FAILED, f"{e.reason}: {e}"
    except Exception as e:
        if not _out_of_memory(e):
            log.exception("trial %s failed", c.trial_id)
            outcome, state, error = "error", TrialState.FAILED, f"error: {type(e).__name__}: {e}"
        else:  # this cell does not fit this device: not retried, the study goes on
            outcome, state = "infeasible", TrialState.INFEASIBLE
            error = f"infeasible: out of memory at batch size {c.cell.batch_size} on {device}"
    if outcome != "complete":
        with_db_retry(lambda: optuna_store.fail_trial(url, optuna_id, outcome), "fail", retry)
        _finish(sessions, c, state, retry, error=error)
        ckpt.unlink(missing_ok=True)
        return outcome

    # The trainer's history is complete even across a resume (a worker killed between
    # a checkpoint and its epoch's callback left that epoch out of our row).
    curves = [h.to_dict() for h in result.history]
    report_epochs()
    metrics = {k: v for k, v in result.to_dict().items() if k != "history"}
    metrics.update(device=device, precision=config.precision)
    value = metrics[objective]
    with_db_retry(
        lambda: optuna_store.complete_trial(url, optuna_id, value, metrics), "tell Optuna", retry
    )
    _finish(sessions, c, TrialState.COMPLETE, retry, value=value, metrics=metrics, curves=curves)
    ckpt.unlink(missing_ok=True)
    return outcome


def _cancelled(sessions: sessionmaker, c: Claim) -> bool:
    with sessions() as session:
        return session.scalar(select(Study.cancelled_at).where(Study.id == c.study_id)) is not None


def _out_of_memory(e: Exception) -> bool:
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()  # the CPU allocator raises a plain RuntimeError
    return isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _finish(
    sessions: sessionmaker, c: Claim, state: TrialState, retry: float, **values: Any
) -> None:
    def write() -> None:
        if not _write(sessions, c, state=state, finished_at=utcnow(), **values):
            log.warning("trial %s: claim lost before recording %s", c.trial_id, state)

    with_db_retry(write, f"record trial {c.trial_id}", retry)
