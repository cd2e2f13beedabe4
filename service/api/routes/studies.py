"""/studies: create a study, list them, read one, its trials, its best cell, its report.

Every route is a plain `def` (run in the threadpool) that opens its database session
inside its own body: see service/api/deps.py for why never through a yield dependency.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from samsweep.core import report as reports
from samsweep.core.db import Study, Trial
from samsweep.core.states import StudyStatus
from samsweep.core.wire import (
    Best,
    BestCell,
    BestTrial,
    Links,
    StudyCreated,
    StudyDetail,
    StudyExtended,
    StudyPage,
    StudyRetried,
    StudySummary,
    Timings,
    TrialList,
    TrialPublic,
)
from service import reads, studies
from service.api.body import OPENAPI_BODY, OPENAPI_PATCH, PatchBody, SpecBody
from service.api.conditional import NotModified, cached_json, etag, not_modified, validators
from service.api.deps import CacheDep, CeleryDep, DbDep, ReadOwner, SettingsDep, WriteOwner
from service.api.offload import heavy
from service.cache import VersionedCache
from service.dispatch import dispatch_now
from service.errors import responses

router = APIRouter(prefix="/studies", tags=["studies"])
# Visible ASCII, no spaces: a key is an opaque token (a UUID, say), never free text.
IDEMPOTENCY_KEY = r"^[\x21-\x7e]+$"
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=200,
        pattern=IDEMPOTENCY_KEY,
        description="one study per (owner, key) for a POST, one change for a PATCH: a replay "
        "returns the study and changes nothing; the same key with another body is a 422",
    ),
]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


def _links(study_id: str) -> Links:
    base = f"/studies/{study_id}"
    return Links(self=base, trials=f"{base}/trials", best=f"{base}/best", report=f"{base}/report")


def _summary(study: Study, counts: dict[str, int]) -> StudySummary:
    return StudySummary(
        id=study.id,
        name=study.name,
        status=reads.study_status(study, counts),
        n_trials=study.n_trials,
        created_at=study.created_at,
        links=_links(study.id),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyCreated,
    responses={
        200: {"model": StudyCreated, "description": "a replay of an Idempotency-Key"},
        **responses(401, 409, 413, 422, 429, 503),
    },
    openapi_extra=OPENAPI_BODY,
)
def create_study(
    spec: SpecBody,
    db: DbDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
    background: BackgroundTasks,
    owner: WriteOwner,
    idempotency_key: IdempotencyKeyHeader = None,
) -> StudyCreated:
    """Create a study: one trial per grid cell and seed, queued for the workers."""
    with db() as session:
        study, created = studies.insert_study(
            session, settings, spec, owner=owner, idempotency_key=idempotency_key
        )
    if created:
        background.add_task(dispatch_now, db, celery, settings)
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/studies/{study.id}"
    return StudyCreated(
        id=study.id,
        name=study.name,
        n_trials=study.n_trials,
        links=_links(study.id),
        replayed=not created,
    )


@router.get("", response_model=StudyPage, responses=responses(401, 422, 503))
def list_studies(db: DbDep, owner: ReadOwner, limit: Limit = 50, offset: Offset = 0) -> StudyPage:
    """The studies, newest first."""
    with db() as session:
        rows, total = reads.list_studies(session, limit, offset, owner)
        counts = reads.state_counts_many(session, [s.id for s in rows])
    return StudyPage(
        items=[_summary(s, counts[s.id]) for s in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{study_id}", response_model=StudyDetail, responses=responses(401, 404, 422, 503))
def get_study(study_id: str, db: DbDep, owner: ReadOwner) -> StudyDetail:
    """Status, counts per trial state, progress, timings and the spec."""
    with db() as session:
        return _detail(session, reads.get_study(session, study_id, owner))


@router.post(
    "/{study_id}/cancel", response_model=StudyDetail, responses=responses(401, 404, 422, 503)
)
def cancel_study(study_id: str, db: DbDep, owner: WriteOwner) -> StudyDetail:
    """Cancel: queued trials now, running ones at their next epoch; results stay."""
    with db() as session:
        study = reads.get_study(session, study_id, owner)
        studies.cancel_study(session, study)
        return _detail(session, study)


@router.patch(
    "/{study_id}",
    response_model=StudyExtended,
    responses=responses(401, 404, 409, 413, 422, 429, 503),
    openapi_extra=OPENAPI_PATCH,
)
def extend_study(
    study_id: str,
    patch: PatchBody,
    db: DbDep,
    settings: SettingsDep,
    celery: CeleryDep,
    background: BackgroundTasks,
    owner: WriteOwner,
    idempotency_key: IdempotencyKeyHeader = None,
) -> StudyExtended:
    """Grow the study: more seeds, more values on a grid axis (each list given whole), or
    a new `max_concurrent_trials` / `priority`. Only the new cells' trials are created
    and run; taking a value away is a 422 (a patch never deletes results)."""
    with db() as session:
        study, added, replayed = studies.extend_study(
            session, settings, study_id, patch, owner=owner, idempotency_key=idempotency_key
        )
        detail = _detail(session, study)
    if not replayed:  # new trials, or a bound that may now let more run
        background.add_task(dispatch_now, db, celery, settings)
    return StudyExtended(**detail.model_dump(), added=added, replayed=replayed)


@router.post(
    "/{study_id}/retry", response_model=StudyRetried, responses=responses(401, 404, 422, 429, 503)
)
def retry_study(
    study_id: str,
    db: DbDep,
    settings: SettingsDep,
    celery: CeleryDep,
    background: BackgroundTasks,
    owner: WriteOwner,
    infeasible: Annotated[
        bool,
        Query(
            description="INFEASIBLE trials too (they ran out of memory: on the same "
            "hardware they will again)"
        ),
    ] = False,
) -> StudyRetried:
    """Queue the study's FAILED and CANCELLED trials again, each for a fresh attempt; a
    cancelled study resumes. What finished stays."""
    with db() as session:
        study = reads.get_study(session, study_id, owner)
        retried = studies.retry_study(session, settings, study, owner, infeasible=infeasible)
        detail = _detail(session, study)
    if retried:
        background.add_task(dispatch_now, db, celery, settings)
    return StudyRetried(**detail.model_dump(), retried=retried)


@router.delete(
    "/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(401, 404, 422, 503),
)
def delete_study(study_id: str, db: DbDep, settings: SettingsDep, owner: WriteOwner) -> Response:
    """Delete the study: its trials stop at their next epoch; its rows, Optuna study and
    checkpoints are removed. 404 afterwards."""
    with db() as session:
        study = reads.get_study(session, study_id, owner)
        studies.delete_study(session, settings, study)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _detail(session: Session, study: Study) -> StudyDetail:
    snap = reads.snapshot(session, study)
    counts, t = snap.counts, snap.timings
    progress = reads.progress(study.n_trials, counts)
    end = t["last_finished_at"] if progress.finished == study.n_trials else None
    return StudyDetail(
        **_summary(study, counts).model_dump(),
        optuna_study_name=study.optuna_study_name,
        counts=counts,
        progress=progress,
        timings=Timings(**t, elapsed_seconds=reads.elapsed_seconds(t["started_at"], end)),
        spec=study.spec,
    )


_TRIAL_FIELDS = tuple(f for f in TrialPublic.model_fields if f != "curves")
_CURVES_BATCH = 20


def _trial_public(t: Trial, curves: list[Any] | None) -> TrialPublic:
    values: dict[str, Any] = {f: getattr(t, f) for f in _TRIAL_FIELDS}
    return TrialPublic(**values, curves=curves)


@router.get("/{study_id}/trials", response_model=TrialList, responses=responses(401, 404, 422, 503))
async def list_trials(
    study_id: str,
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    owner: ReadOwner,
    limit: Limit = 500,
    offset: Offset = 0,
    curves: Annotated[
        bool, Query(description="include per-epoch curves (the page then ends by size)")
    ] = False,
) -> Response:
    """The trials in grid order, a page at a time: params, state, metrics and, with
    `curves=true`, every epoch's record. A page with curves ends before
    SAMSWEEP_MAX_PAGE_BYTES (at least one trial); `next_offset` says where to go on."""
    page = await heavy(
        lambda: _trials_page(db, study_id, owner, limit, offset, curves, settings.max_page_bytes),
        request,
    )
    return Response(page, media_type="application/json")


def _trials_page(
    db: sessionmaker[Session],
    study_id: str,
    owner: str | None,
    limit: int,
    offset: int,
    curves: bool,
    budget: int,
) -> bytes:
    with db() as session:
        study = reads.get_study(session, study_id, owner)
        rows = reads.trial_page(session, study, limit, offset)
        kept = _within(session, rows, budget) if curves else [_trial_public(t, None) for t in rows]
    end = offset + len(kept)
    more = end < study.n_trials and (len(kept) < len(rows) or len(rows) == limit)
    return (
        TrialList(
            study_id=study.id,
            trials=kept,
            total=study.n_trials,
            limit=limit,
            offset=offset,
            next_offset=end if more else None,
        )
        .model_dump_json()
        .encode()
    )


def _within(session: Session, rows: Sequence[Trial], budget: int) -> list[TrialPublic]:
    """The rows with their curves, read a few trials at a time, up to the first that would
    take the page past `budget` bytes of JSON (the first row is always kept)."""
    kept: list[TrialPublic] = []
    used = 0
    for start in range(0, len(rows), _CURVES_BATCH):
        chunk = rows[start : start + _CURVES_BATCH]
        found = reads.trial_curves(session, [t.id for t in chunk])
        for t in chunk:
            public = _trial_public(t, found.get(t.id, []))
            size = len(public.model_dump_json())
            if kept and used + size > budget:
                return kept
            used += size
            kept.append(public)
    return kept


@router.get(
    "/{study_id}/best",
    response_model=Best,
    responses={304: {"description": "unchanged since the ETag sent"},
               **responses(401, 404, 409, 422, 503)},
)  # fmt: skip
async def best(
    study_id: str, request: Request, db: DbDep, owner: ReadOwner, cache: CacheDep
) -> Response:
    """The best grid cell by its mean objective over seeds (and the single best trial),
    and how complete the study is. Computed once per study version (see `ETag`)."""
    found = await _versioned(request, db, study_id, owner, cache, ("best",), _best)
    if found.body is None:
        return NotModified(found.tag)
    return cached_json(found.body, found.tag)


@dataclass
class _Answer:
    study: Study
    tag: str
    body: bytes | None  # None: the client's copy is current (304)


async def _versioned(
    request: Request,
    db: sessionmaker[Session],
    study_id: str,
    owner: str | None,
    cache: VersionedCache,
    what: tuple[str, ...],
    build: Callable[[Session, Study, reads.Snapshot, VersionedCache], bytes],
) -> _Answer:
    """An answer derived from the study's trials: its version and a cache hit are looked
    up in the ordinary threadpool (one cheap query); only a miss is built, by `build`, in
    the threads for expensive work (service/api/offload.py), once per version."""

    def look() -> tuple[Study, reads.Snapshot, bytes | None]:
        with db() as session:
            study = reads.get_study(session, study_id, owner)
            snap = reads.snapshot(session, study)
        return study, snap, cache.get((study.id, snap.results, *what))

    study, snap, body = await run_in_threadpool(look)
    tag = etag(snap.results, *what)
    if not_modified(request, tag):
        return _Answer(study, tag, None)
    if body is None:

        def compute() -> bytes:
            with db() as session:
                key = (study.id, snap.results, *what)
                return cache.get_or_compute(key, lambda: build(session, study, snap, cache))

        body = await heavy(compute, request)
    return _Answer(study, tag, body)


def _best(session: Session, study: Study, snap: reads.Snapshot, cache: VersionedCache) -> bytes:
    counts = snap.counts
    status_ = reads.study_status(study, counts)
    report = reads.study_report(session, study, snap.results, cache)
    top = reads.best_trial(session, study.id)
    objective = report.objective
    found = reports.best_cell(report, objective)
    cell = None
    if found is not None:
        group, row = found
        cell = BestCell(
            **group.cell(row).model_dump(),
            n=len(row.seeds),
            seeds=row.seeds,
            objective=row.metrics[objective],
            metrics=row.metrics,
        )
    answer = Best(
        study_id=study.id,
        objective=objective,
        selected_on_test=objective == "test_accuracy",
        status=status_,
        counts=counts,
        complete=status_ is StudyStatus.COMPLETE,
        cell=cell,
        best=None
        if top is None or top.value is None
        else BestTrial(
            number=top.number,
            params=top.params,
            value=top.value,
            metrics=top.metrics or {},
            optuna_trial_number=top.optuna_trial_number,
        ),
    )
    return answer.model_dump_json().encode()


@router.get(
    "/{study_id}/report",
    response_model=reports.Report,
    responses={
        200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with ?format=csv"},
        **responses(401, 404, 409, 422, 503),
    },
)
async def report(
    study_id: str,
    request: Request,
    db: DbDep,
    owner: ReadOwner,
    cache: CacheDep,
    format: Annotated[
        Literal["json", "csv"], Query(description="csv: one line per row, for spreadsheets")
    ] = "json",
) -> Response:
    """Per batch size and SAM setting: baseline and each rho as mean ± std over seeds, the
    rho selected on the selection metric, SAM's paired gain with a 95 % interval, and the
    fraction of the large-batch drop SAM recovers. Unfinished cells are counted. Computed
    once per study version (see `ETag`)."""

    def build(session: Session, study: Study, snap: reads.Snapshot, c: VersionedCache) -> bytes:
        result = reads.study_report(session, study, snap.results, c)
        return result.model_dump_json().encode() if format == "json" else _csv(result)

    found = await _versioned(request, db, study_id, owner, cache, ("report", format), build)
    if found.body is None:
        return NotModified(found.tag)
    if format == "json":
        return cached_json(found.body, found.tag)
    return Response(
        found.body,
        media_type="text/csv",
        headers={
            **validators(found.tag),
            "Content-Disposition": f'attachment; filename="{found.study.id}-report.csv"',
        },
    )


def _csv(result: reports.Report) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=reports.CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(reports.to_rows(result))
    return out.getvalue().encode()
