"""Response schemas (pydantic): what the API promises to return (and what /docs shows).
Not to be confused with trainer/models.py, the networks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from samsweep.core.report import Stat
from samsweep.core.states import StudyStatus


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable: invalid_spec, not_found, unauthorized, ...")
    message: str
    field: str | None = Field(description="the dotted field at fault (search.rho.1), if any")
    details: list[ErrorDetail] = Field(description="every field error, for invalid_spec")


class ErrorResponse(BaseModel):
    """The one shape of every error answer."""

    error: ErrorInfo


class Links(BaseModel):
    self: str
    trials: str
    best: str
    report: str


class StudyCreated(BaseModel):
    id: str
    name: str
    n_trials: int
    links: Links


class Progress(BaseModel):
    total: int
    finished: int
    fraction: float


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    last_finished_at: datetime | None
    elapsed_seconds: float | None


class StudySummary(BaseModel):
    id: str
    name: str
    status: StudyStatus
    n_trials: int
    created_at: datetime
    links: Links


class StudyPage(BaseModel):
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


class TrialPublic(BaseModel):
    number: int
    params: dict[str, Any]
    state: str
    attempts: int
    value: float | None
    metrics: dict[str, Any] | None
    curves: list[dict[str, Any]] | None = Field(
        description="per-epoch metrics; null unless asked for with curves=true"
    )
    error: str | None
    epoch: int
    started_at: datetime | None
    finished_at: datetime | None
    optuna_trial_number: int | None


class TrialList(BaseModel):
    study_id: str
    trials: list[TrialPublic]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(
        description="where the next page starts; null after the last. With curves, a page "
        "ends before SAMSWEEP_MAX_PAGE_BYTES, so it may hold fewer than `limit` trials"
    )


class BestTrial(BaseModel):
    number: int
    params: dict[str, Any]
    value: float
    metrics: dict[str, Any]
    optuna_trial_number: int | None


class BestCell(BaseModel):
    """A grid cell (its trials over seeds), by its mean objective over seeds."""

    base_optimizer: str
    batch_size: int
    rho: float
    sam_variant: str | None
    m: int | None
    n: int = Field(description="complete trials (seeds) the mean is over")
    seeds: list[int]
    objective: Stat = Field(description="the study's objective, mean ± std over seeds")
    metrics: dict[str, Stat]


class Best(BaseModel):
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


class Health(BaseModel):
    status: str
    database: str
    broker: str
