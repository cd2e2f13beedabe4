"""What the API answers, as typed models the client parses its JSON into.

They mirror the API's response schemas (service/schemas.py, which the client may not
import) and keep fields they do not name (`extra="allow"`), so a newer API with more
fields still parses. The report is the core's own model, `samsweep.core.report.Report`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from samsweep.core.report import Stat, require_pandas
from samsweep.core.states import StudyStatus


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Links(_Answer):
    self: str
    trials: str
    best: str
    report: str


class StudyCreated(_Answer):
    id: str
    name: str
    n_trials: int
    links: Links
    replayed: bool = Field(False, description="an Idempotency-Key replay: no new study")


class Progress(_Answer):
    total: int
    finished: int
    fraction: float


class Timings(_Answer):
    created_at: datetime
    started_at: datetime | None
    last_finished_at: datetime | None
    elapsed_seconds: float | None


class StudySummary(_Answer):
    id: str
    name: str
    status: StudyStatus
    n_trials: int
    created_at: datetime


class StudyDetail(StudySummary):
    optuna_study_name: str
    counts: dict[str, int]
    progress: Progress
    timings: Timings
    spec: dict[str, Any]

    @property
    def finished(self) -> bool:
        """Complete or cancelled: nothing more will run."""
        return self.status.finished


class Trial(_Answer):
    number: int
    params: dict[str, Any]
    state: str
    attempts: int
    value: float | None
    metrics: dict[str, Any] | None
    curves: list[dict[str, Any]] | None = None
    error: str | None
    epoch: int
    started_at: datetime | None
    finished_at: datetime | None
    optuna_trial_number: int | None = None


class Trials(list[Trial]):
    """Every trial of a study, in grid order (a list), with `to_dataframe()`."""

    def to_dataframe(self) -> Any:
        """One row per trial: number, state, attempts, epoch, error, then each param and
        each metric as a column (curves are left out). Needs pandas (`samsweep[pandas]`)."""
        pd = require_pandas("Trials.to_dataframe()")
        records = []
        for t in self:
            record: dict[str, Any] = {
                "number": t.number,
                "state": t.state,
                "attempts": t.attempts,
                "epoch": t.epoch,
                "error": t.error,
            }
            record.update(t.params)
            record.update(t.metrics or {})
            records.append(record)
        return pd.DataFrame.from_records(records)


class BestTrial(_Answer):
    number: int
    params: dict[str, Any]
    value: float
    metrics: dict[str, Any]
    optuna_trial_number: int | None = None


class BestCell(_Answer):
    base_optimizer: str
    batch_size: int
    rho: float
    sam_variant: str | None
    m: int | None
    n: int
    seeds: list[int]
    objective: Stat
    metrics: dict[str, Stat]


class Best(_Answer):
    study_id: str
    objective: str
    selected_on_test: bool
    status: StudyStatus
    counts: dict[str, int]
    complete: bool
    cell: BestCell | None = Field(description="the best grid cell by its mean over seeds")
    best: BestTrial | None = Field(description="the single best trial (one seed)")
