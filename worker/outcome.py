"""What became of one delivery of a trial's task (the task's return value, in its log)."""

from __future__ import annotations

import enum

from samsweep.states import TrialState


class Outcome(enum.StrEnum):
    COMPLETE = "complete"  # trained and recorded
    ADOPTED = "adopted"  # an earlier attempt's Optuna result, recorded without retraining
    SKIPPED = "skipped"  # not QUEUED: another worker has it, or it is finished
    CLAIM_LOST = "claim lost"  # the sweeper gave it to another worker mid-training
    CANCELLED = "cancelled"  # its study was cancelled
    DIVERGED = "diverged"  # the loss became NaN or infinite (trainer.DivergedError)
    INFEASIBLE = "infeasible"  # out of memory at this batch size on this device
    ERROR = "error"  # any other failure, recorded with its exception

    @property
    def state(self) -> TrialState | None:
        """The trial's final state for this outcome; None where this worker records
        nothing (another worker owns the trial, or nothing was claimed)."""
        return _STATES.get(self)


_STATES = {
    Outcome.COMPLETE: TrialState.COMPLETE,
    Outcome.ADOPTED: TrialState.COMPLETE,
    Outcome.CANCELLED: TrialState.CANCELLED,
    Outcome.DIVERGED: TrialState.FAILED,
    Outcome.INFEASIBLE: TrialState.INFEASIBLE,
    Outcome.ERROR: TrialState.FAILED,
}
