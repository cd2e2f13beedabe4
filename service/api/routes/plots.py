"""/studies/{id}/plots/{kind}: the study's plots as SVG or PNG (drawn by service.plots in
service.render's processes, cached per study version, with an ETag)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session, sessionmaker

from samsweep.core.db import Study
from service import plots, reads
from service.api.conditional import NotModified, etag, not_modified, validators
from service.api.deps import CacheDep, DbDep, ReadOwner
from service.cache import VersionedCache
from service.errors import responses
from service.render import Renderer

router = APIRouter(prefix="/studies", tags=["plots"])

Kind = Literal["rho", "gap", "heatmap", "sharpness", "curves", "history", "importance"]
assert set(Kind.__args__) == set(plots.KINDS)  # type: ignore[attr-defined]


def _inputs(
    db: sessionmaker[Session],
    study: Study,
    version: str,
    kind: str,
    fmt: str,
    trial: int | None,
    cache: VersionedCache,
) -> tuple[Any, ...]:
    """What `plots.render` takes, read in one session: the report (cached per version)
    and the trials, with only the curves drawn."""
    with db() as session:
        report = reads.study_report(session, study, version, cache)
        trials = reads.plotted_trials(session, study, report, kind == "curves", trial)
    return kind, fmt, report, trials, report.objective, trial


@router.get(
    "/{study_id}/plots/{kind}",
    response_class=Response,
    responses={
        200: {
            "content": {"image/svg+xml": {}, "image/png": {}},
            "description": "the plot; a study without a complete trial yet gets a figure "
            "that says so, and a grid too large to draw readably a figure that says what "
            "to read instead",
        },
        304: {"description": "unchanged since the ETag sent"},
        **responses(401, 404, 409, 422, 503),
    },
)
async def plot(
    study_id: str,
    kind: Kind,
    request: Request,
    db: DbDep,
    owner: ReadOwner,
    cache: CacheDep,
    format: Annotated[
        Literal["svg", "png"], Query(description=f"png: {plots.PNG_DPI} dpi, for papers")
    ] = "svg",
    trial: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**31 - 1,
            description="curves only: this trial's number; default: "
            "every complete trial of the best cell (by the study's objective)",
        ),
    ] = None,  # fmt: skip
) -> Response:
    """A plot of the study: `rho` (test accuracy vs ρ per batch size, log-x, the ρ = 0
    baseline as a dashed line), `gap` (train vs test accuracy, baseline vs SAM at the
    selected ρ), `heatmap` (mean test accuracy over ρ × batch size), `sharpness`
    (sharpness vs test accuracy per trial, coloured by ρ) or `curves` (per-epoch train,
    validation and test accuracy).

    Drawn once per study version, in separate processes: send the `ETag` back in
    `If-None-Match` to get a 304 while the study has not changed. 503 with Retry-After
    when too many plots are being drawn; 422 when a plot cannot be drawn within the
    time budget (SAMSWEEP_PLOT_TIMEOUT_SECONDS)."""
    trial = trial if kind == "curves" else None  # only curves take a trial

    def find() -> tuple[Study, reads.Snapshot]:
        with db() as session:
            study = reads.get_study(session, study_id, owner)
            return study, reads.snapshot(session, study)

    study, snap = await anyio.to_thread.run_sync(find)
    # Only the curves change with every epoch; the other plots with the results.
    version = snap.version if kind == "curves" else snap.results
    tag = etag(version, "plot", kind, format, trial)
    if not_modified(request, tag):
        return NotModified(tag)
    renderer: Renderer = request.app.state.renderer
    key = (study.id, version, "plot", kind, format, trial)
    body = await renderer.render(
        key, lambda: _inputs(db, study, snap.results, kind, format, trial, cache), cache
    )
    return Response(
        body,
        media_type=plots.FORMATS[format],
        headers={
            **validators(tag),
            "Content-Disposition": f'inline; filename="{study.id}-{kind}.{format}"',
        },
    )
