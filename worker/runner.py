"""Run one trial: claim its row, train it, report to Optuna, record the result once.

Each step has its own module: the claim and the guarded writes (claim.py), retry
while the database is down (retry.py), the heartbeat (heartbeat.py), the spec as
the trainer's config (trial_config.py), device policy (device.py), and the
per-epoch and final recording (recorder.py). This module puts them in order.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

import trainer
from samsweep.core import optuna_store
from samsweep.core.db import session_factory
from samsweep.core.settings import Settings
from samsweep.core.states import TrialState
from worker import metrics
from worker.claim import Claim, claim, finish, write_claimed
from worker.device import is_out_of_memory, resolve_device
from worker.heartbeat import Heartbeat
from worker.outcome import Outcome, public_error, public_text
from worker.packing import CudaProbe, Ledger, Packer, memory_key
from worker.recorder import Stop, TrialRecorder
from worker.retry import DATABASE_DOWN, with_db_retry
from worker.slots import threads_for_this_slot
from worker.trial_config import trial_config

log = logging.getLogger(__name__)


def run_trial(trial_id: int, settings: Settings) -> Outcome:
    """Train one trial end to end; returns what became of it (for the task log)."""
    sessions = session_factory(settings.resolved_database_url)
    retry = settings.db_retry_seconds
    c = with_db_retry(lambda: claim(sessions, trial_id), f"claim trial {trial_id}", retry)
    if c is None:
        log.info("trial %s not claimed (taken, finished, or its study at its bound)", trial_id)
        return Outcome.SKIPPED
    try:
        return _run_claimed(c, settings, sessions)
    except DATABASE_DOWN:
        raise  # the database stayed down past the retry budget: the sweeper re-runs it
    except Exception as e:
        # Anything else is this trial's real failure (its Optuna study was deleted, say):
        # record it as the reason, never leave the row RUNNING for the sweeper to call
        # "worker lost" while this worker is alive (tests/e2e/test_faults.py).
        log.exception("trial %s failed outside training", trial_id)
        error = f"error: {public_error(e, settings.data_dir)}"
        finish(sessions, c, TrialState.FAILED, retry, error=error)
        return Outcome.ERROR


def checkpoint_path(settings: Settings, c: Claim) -> Path:
    return settings.resolved_checkpoint_dir / c.study_id / f"trial-{c.trial_id}.pt"


def remove_checkpoint(path: Path) -> None:
    """Remove a checkpoint, and its study's directory once it holds no other."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # another trial's checkpoint is there, or it is gone
        path.parent.rmdir()


def _run_claimed(c: Claim, settings: Settings, sessions: sessionmaker[Session]) -> Outcome:
    url, retry = settings.resolved_optuna_url, settings.db_retry_seconds
    if c.attempt > 1:  # only a re-run can find Optuna trials of earlier attempts
        earlier = with_db_retry(
            lambda: optuna_store.settle_earlier_attempts(url, c.optuna_study_name, c.trial_id),
            "settle earlier attempts",
            retry,
        )
        if earlier is not None:  # recorded in Optuna, lost before our row: adopt, never retrain
            metrics = {
                k: v for k, v in earlier.user_attrs.items() if k not in optuna_store.BOOKKEEPING
            }
            finish(sessions, c, TrialState.COMPLETE, retry, value=earlier.value, metrics=metrics)
            return Outcome.ADOPTED
    if c.asked is not None:  # the sampler's own trial for this configuration
        optuna_id, optuna_number = c.asked
    else:
        optuna_id, optuna_number = with_db_retry(
            lambda: optuna_store.start_trial(
                url, c.optuna_study_name, c.spec, c.params, c.trial_id
            ),
            "create the Optuna trial",
            retry,
        )
    with_db_retry(
        lambda: write_claimed(
            sessions, c, optuna_trial_id=optuna_id, optuna_trial_number=optuna_number
        ),
        "record the Optuna trial",
        retry,
    )
    heartbeat = Heartbeat(sessions, c, settings.heartbeat_seconds)
    heartbeat.start()
    try:
        recorder = TrialRecorder(sessions, c, url, optuna_id, heartbeat, retry)
        return _train(c, settings, recorder)
    finally:
        heartbeat.stopped.set()


def packer_for(settings: Settings, device: str) -> Packer | None:
    """This slot's share of its GPU when several slots share one (worker/packing.py)."""
    if not device.startswith("cuda") or settings.slots_per_gpu == 1:
        return None
    ledger = Ledger(settings.state_dir / "gpus", os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
    return Packer(ledger, CudaProbe(), settings.slots_per_gpu, settings.gpu_slots)


def _fit(
    config: trainer.TrialConfig,
    c: Claim,
    on_epoch: trainer.EpochCallback,
    packer: Packer | None,
) -> trainer.TrialResult:
    """Train, alone on the device or packed beside other slots' trials: a trial that runs
    out of memory while sharing its GPU is re-run alone from its last checkpoint."""
    if packer is None:
        return trainer.fit(config, on_epoch=on_epoch)
    packer.admit(memory_key(config), c.trial_id)
    try:
        try:
            return trainer.fit(config, on_epoch=packer.watching(on_epoch))
        except Exception as e:
            if not (is_out_of_memory(e) and packer.sharing):
                raise
            log.warning("trial %s ran out of memory beside other trials: re-run alone", c.trial_id)
        # out of the except block: the failed run's frames (and their tensors) are gone
        packer.rerun_alone(c.trial_id)
        return trainer.fit(config, on_epoch=packer.watching(on_epoch))
    finally:
        packer.release()


def _train(c: Claim, settings: Settings, recorder: TrialRecorder) -> Outcome:
    ckpt = checkpoint_path(settings, c)
    device = settings.device
    try:  # the set-up too: a dataset refused here fails the Optuna trial as well
        threads = threads_for_this_slot(settings.torch_threads)
        device = resolve_device(settings.device, threads)
        log.info("trial %s: training on %s, %d CPU thread(s)", c.trial_id, device, threads)
        config = trial_config(
            c.spec, c.params, data_dir=settings.data_dir, device=device, checkpoint_path=ckpt
        )
        with metrics.busy():
            on_epoch = metrics.counting_epochs(recorder.on_epoch)
            result = _fit(config, c, on_epoch, packer_for(settings, device))
    except Stop as e:
        if e.outcome is Outcome.DELETED:  # the API removed the study's checkpoints already,
            remove_checkpoint(ckpt)  # perhaps before this epoch's was written
            return e.outcome
        if e.outcome is Outcome.PRUNED:  # its curve so far is recorded: it ends there
            outcome = recorder.finish(Outcome.PRUNED)
        elif e.outcome is Outcome.CANCELLED:
            outcome = recorder.finish(Outcome.CANCELLED, error="cancelled")
        else:
            return e.outcome  # the claim went to another worker: leave its checkpoint
    except trainer.TrainingError as e:
        error = f"{e.reason}: {public_text(str(e), settings.data_dir)}"
        outcome = recorder.finish(Outcome(e.reason), error=error)
    except Exception as e:
        if is_out_of_memory(e):  # this cell does not fit this device: not retried
            error = f"infeasible: out of memory at batch size {c.params.batch_size} on {device}"
            outcome = recorder.finish(Outcome.INFEASIBLE, error=error)
        else:
            log.exception("trial %s failed", c.trial_id)
            error = f"error: {public_error(e, settings.data_dir)}"  # the log has the rest
            outcome = recorder.finish(Outcome.ERROR, error=error)
    else:
        outcome = recorder.finish(Outcome.COMPLETE, result=result)
    ckpt.unlink(missing_ok=True)
    return outcome
