"""The states a trial and a study can be in: plain enums, shared by the API, the
worker and the client (which compare them), importing nothing but the standard library."""

from __future__ import annotations

import enum


class TrialState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INFEASIBLE = "INFEASIBLE"  # e.g. out of memory at this batch size: not retried
    PRUNED = "PRUNED"  # stopped early by the study's pruner: its curve ends where it stopped


FINISHED_STATES = (
    TrialState.COMPLETE,
    TrialState.FAILED,
    TrialState.CANCELLED,
    TrialState.INFEASIBLE,
    TrialState.PRUNED,
)


class StudyStatus(enum.StrEnum):
    """A study's status, derived from its trials' states (service.reads.study_status)."""

    QUEUED = "queued"  # no trial started yet
    RUNNING = "running"  # some trial running or finished, not all finished
    COMPLETE = "complete"  # every trial finished (complete, pruned, failed or infeasible)
    CANCELLED = "cancelled"  # cancelled, and every trial finished or cancelled

    @property
    def finished(self) -> bool:
        return self in (StudyStatus.COMPLETE, StudyStatus.CANCELLED)
