"""Recording one claimed trial as it trains: every epoch to our tables and to Optuna,
then its outcome once, with its learning curves as a figure optuna-dashboard shows.
The trainer calls `on_epoch` (which stops the trial when the study's pruner
says so); the runner calls `finish`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from samsweep.core import optuna_store
from samsweep.core.db import utcnow
from trainer import EpochMetrics, TrialResult
from worker.claim import Claim, finish, study_cancelled, trial_deleted, write_claimed
from worker.dashboard import save_learning_curves
from worker.heartbeat import Heartbeat
from worker.outcome import Outcome
from worker.retry import with_db_retry

T = TypeVar("T")


log = logging.getLogger(__name__)


class Stop(Exception):
    """Raised from `on_epoch` to stop training: the study was cancelled or deleted, or
    the claim went to another worker. fit() lets it through unchanged."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome


class TrialRecorder:
    """One claimed trial's record in our tables and in its Optuna trial.

    Each epoch appends one row (samsweep_trial_epochs), never the whole history. The
    recorder keeps, by epoch, the records its trial's rows hold: what an earlier
    attempt recorded (a resume keeps those epochs) and what it appended since. A
    resumed attempt re-trains from its checkpoint: its first epoch replaces that
    epoch's row and deletes the earlier attempt's later ones, as they are trained
    again. Every epoch is reported to the Optuna trial once, the earlier attempt's
    included, so the new Optuna trial has them all.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        claim: Claim,
        optuna_url: str,
        optuna_trial_id: int,
        heartbeat: Heartbeat,
        retry_seconds: float,
    ) -> None:
        self.sessions, self.claim, self.heartbeat = sessions, claim, heartbeat
        self.optuna_url, self.optuna_trial_id, self.retry = (
            optuna_url,
            optuna_trial_id,
            retry_seconds,
        )
        # epoch -> record, in epoch order: what the trial's rows hold
        self._rows: dict[int, dict[str, Any]] = {e["epoch"]: e for e in claim.curves}
        self._reported: set[int] = set()

    @property
    def curves(self) -> list[dict[str, Any]]:
        return list(self._rows.values())

    def on_epoch(self, m: EpochMetrics) -> None:
        """Record epoch `m`; raise Stop if the claim is lost or the study cancelled or
        deleted."""
        record = m.to_dict()
        last = next(reversed(self._rows), 0)  # the keys stay in epoch order
        retrained = [e for e in self._rows if e > m.epoch] if last > m.epoch else []
        for e in retrained:
            del self._rows[e]
        self._rows[m.epoch] = record
        values = {"epoch": m.epoch, "heartbeat_at": utcnow()}
        kept = self._retry(
            lambda: write_claimed(self.sessions, self.claim, [record], retrained, **values),
            "epoch",
        )
        if not kept or self.heartbeat.lost.is_set():
            if self._retry(lambda: trial_deleted(self.sessions, self.claim), "check for delete"):
                raise Stop(Outcome.DELETED)
            raise Stop(Outcome.CLAIM_LOST)
        # the first epoch of an attempt also reports the epochs an earlier one recorded
        report = self._rows.values() if not self._reported else [record]
        if self._retry(lambda: study_cancelled(self.sessions, self.claim), "check for cancel"):
            # A DELETE cancels, then removes the Optuna study: the trial may be gone there.
            with contextlib.suppress(KeyError):
                self._report_epochs(report)
            raise Stop(Outcome.CANCELLED)
        self._report_epochs(report)
        if self._pruned():
            raise Stop(Outcome.PRUNED)

    def _pruned(self) -> bool:
        """Whether the study's pruner stops the trial at the epoch just reported."""
        c = self.claim
        if not c.spec.pruner.prunes:
            return False
        return self._retry(
            lambda: optuna_store.should_prune(
                self.optuna_url, c.optuna_study_name, c.spec, self.optuna_trial_id, c.epochs
            ),
            "ask the pruner",
        )

    def finish(
        self, outcome: Outcome, result: TrialResult | None = None, error: str | None = None
    ) -> Outcome:
        """Record the outcome once: a complete trial's metrics and full history, or a
        failed one's reason (its Optuna trial FAILED with the outcome as reason). Either
        way the epochs it trained become its figure in optuna-dashboard, saved before the
        Optuna trial is told, so a finished Optuna trial has its figure."""
        state = outcome.state
        if state is None:  # the claim went to another worker: it owns the trial now
            return outcome
        if result is None:
            self._save_figure()
            if outcome is Outcome.PRUNED:
                tell = partial(optuna_store.prune_trial, self.optuna_url, self.optuna_trial_id)
            else:
                tell = partial(optuna_store.fail_trial, self.optuna_url, self.optuna_trial_id,
                               outcome)  # fmt: skip
            self._retry(tell, f"record the Optuna trial {outcome.value}")
            finish(self.sessions, self.claim, state, self.retry, error=error)
            return outcome
        # The trainer's history is complete even across a resume (a worker killed between
        # a checkpoint and its epoch's callback left that epoch out of our rows): the rows
        # become it, writing only those that differ.
        history = {h.epoch: h.to_dict() for h in result.history}
        put = [r for e, r in history.items() if self._rows.get(e) != r]
        drop = [e for e in self._rows if e not in history]
        self._rows = dict(sorted(history.items()))
        self._report_epochs(self._rows.values())
        self._save_figure()
        metrics = {k: v for k, v in result.to_dict().items() if k != "history"}
        value = metrics[self.claim.spec.objective]
        self._retry(
            lambda: optuna_store.complete_trial(
                self.optuna_url, self.optuna_trial_id, value, metrics
            ),
            "tell Optuna",
        )
        finish(self.sessions, self.claim, state, self.retry, put, drop, value=value,
               metrics=metrics)  # fmt: skip
        return outcome

    def _report_epochs(self, records: Iterable[dict[str, Any]]) -> None:
        objective = self.claim.spec.intermediate  # the pruner's input where it prunes
        for e in records:
            if e["epoch"] not in self._reported:
                report = partial(
                    optuna_store.report,
                    self.optuna_url,
                    self.optuna_trial_id,
                    e["epoch"],
                    e.get(objective),
                )
                self._retry(report, "report an epoch")
                self._reported.add(e["epoch"])

    def _save_figure(self) -> None:
        """The optuna-dashboard figure: a nicety, so any failure to save it (the database
        past its retry budget included) is logged and the trial is recorded all the same."""
        c = self.claim
        try:
            self._retry(
                lambda: save_learning_curves(
                    self.optuna_url, c.optuna_study_name, self.optuna_trial_id, c.params,
                    c.spec.objective, self.curves,
                ),
                "save the learning curves figure",
            )  # fmt: skip
        except Exception:
            log.warning("trial %s: the dashboard figure was not saved", c.trial_id, exc_info=True)

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return with_db_retry(fn, f"trial {self.claim.trial_id}: {what}", self.retry)
