"""The API's answers on the wire: one set of models, declared by the API (its response
schemas, what /docs shows) and parsed into by the client (samsweep.client).

Every model keeps fields it does not name (`extra="allow"`, so the schema says
`additionalProperties: true`): a client parses the answers of a newer API that has added
fields, and keeps them. The report is the core's own model (samsweep.core.report).
Not to be confused with trainer/models.py, the networks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from samsweep.core.report import Stat, require_pandas
from samsweep.core.spec import Cell
from samsweep.core.states import StudyStatus


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Wire):
    field: str
    message: str


class ErrorInfo(_Wire):
    code: str = Field(description="machine-readable: invalid_spec, not_found, unauthorized, ...")
    message: str
    field: str | None = Field(description="the dotted field at fault (search.rho.1), if any")
    details: list[ErrorDetail] = Field(description="every field error, for invalid_spec")


class ErrorResponse(_Wire):
    """The one shape of every error answer."""

    error: ErrorInfo


class Links(_Wire):
    self: str
    trials: str
    best: str
    report: str


class StudyCreated(_Wire):
    id: str
    name: str
    n_trials: int
    links: Links
    replayed: bool = Field(
        False, description="an Idempotency-Key replay (status 200): no new study was made"
    )


class Progress(_Wire):
    total: int
    finished: int
    fraction: float


class Timings(_Wire):
    created_at: datetime
    started_at: datetime | None
    last_finished_at: datetime | None
    elapsed_seconds: float | None


class StudySummary(_Wire):
    id: str
    name: str
    status: StudyStatus
    n_trials: int
    created_at: datetime
    links: Links


class StudyPage(_Wire):
    items: list[StudySummary]
    total: int
    limit: int
    offset: int


class StudyDetail(StudySummary):
    optuna_study_name: str = Field(description="the study's name in Optuna's storage")
    counts: dict[str, int]
    progress: Progress
    timings: Timings
    spec: dict[str, Any]

    @property
    def finished(self) -> bool:
        """Complete or cancelled: nothing more will run."""
        return self.status.finished


class StudyExtended(StudyDetail):
    """The study after a PATCH."""

    added: int = Field(description="trials this patch created (0 for a replay)")
    replayed: bool = Field(
        False, description="an Idempotency-Key replay: the study as it is, nothing changed"
    )


class StudyRetried(StudyDetail):
    """The study after POST /studies/{id}/retry."""

    retried: int = Field(description="trials queued again")


class TrialPublic(_Wire):
    number: int
    params: dict[str, Any]
    state: str
    attempts: int
    value: float | None
    metrics: dict[str, Any] | None
    curves: list[dict[str, Any]] | None = Field(
        None, description="per-epoch metrics; null unless asked for with curves=true"
    )
    error: str | None
    epoch: int
    started_at: datetime | None
    finished_at: datetime | None
    optuna_trial_number: int | None = None


class Trials(list[TrialPublic]):
    """Every trial of a study, in grid order (a list), with `to_dataframe()`: what the
    client's `trials()` returns."""

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


class TrialList(_Wire):
    study_id: str
    trials: list[TrialPublic]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(
        description="where the next page starts; null after the last. With curves, a page "
        "ends before SAMSWEEP_MAX_PAGE_BYTES, so it may hold fewer than `limit` trials"
    )


class BestTrial(_Wire):
    number: int
    params: dict[str, Any]
    value: float
    metrics: dict[str, Any]
    optuna_trial_number: int | None = None


class BestCell(_Wire):
    """A grid cell (its trials over seeds), by its mean objective over seeds."""

    base_optimizer: str
    batch_size: int
    rho: float
    sam_variant: str | None
    m: int | None
    lr: float | None = Field(None, description="where train.lr is a grid axis")
    weight_decay: float | None = Field(None, description="where train.weight_decay is an axis")
    sam_start: float | None = Field(None, description="SAM late, where it is an axis")
    sam_every: int | None = Field(None, description="SAM every k-th step, where it is an axis")
    n: int = Field(description="complete trials (seeds) the mean is over")
    seeds: list[int]
    objective: Stat = Field(description="the study's objective, mean ± std over seeds")
    metrics: dict[str, Stat]

    @property
    def cell(self) -> Cell:
        return Cell.from_params(self.model_dump())


class Best(_Wire):
    study_id: str
    objective: str = Field(description="what selected: the study's objective metric")
    selected_on_test: bool = Field(
        description="true when the objective is test accuracy: the selection saw the test "
        "set, so its test accuracy is optimistic"
    )
    status: StudyStatus
    counts: dict[str, int]
    complete: bool
    cell: BestCell | None = Field(description="the best grid cell by its mean over seeds")
    best: BestTrial | None = Field(description="the single best trial (one seed): luckiest")


class OverviewItem(_Wire):
    id: str
    name: str
    status: StudyStatus
    n_trials: int
    created_at: datetime
    counts: dict[str, int]
    progress: Progress
    objective: str
    best_mean: float | None = Field(
        description="the best grid cell's mean objective over its complete seeds"
    )
    page: str


class Overview(_Wire):
    items: list[OverviewItem]
    total: int
    limit: int
    offset: int


class Health(_Wire):
    status: str
    database: str
    broker: str
