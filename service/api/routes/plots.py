"""/studies/{id}/plots/{kind}: the study's plots as SVG or PNG (drawn by service.plots)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from samsweep.db import Trial, curves_for
from samsweep.report import build_report
from service import plots, studies
from service.api.deps import DbDep, ReadOwner
from service.errors import NotFound, responses

router = APIRouter(prefix="/studies", tags=["plots"])

Kind = Literal["rho", "gap", "heatmap", "sharpness", "curves"]
assert set(Kind.__args__) == set(plots.KINDS)  # type: ignore[attr-defined]


@router.get(
    "/{study_id}/plots/{kind}",
    response_class=Response,
    responses={
        200: {
            "content": {"image/svg+xml": {}, "image/png": {}},
            "description": "the plot; a study without a complete trial yet gets a figure "
            "that says so",
        },
        **responses(401, 404, 409, 422, 503),
    },
)
def plot(
    study_id: str,
    kind: Kind,
    db: DbDep,
    owner: ReadOwner,
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
    validation and test accuracy)."""
    with db() as session:
        study = studies.get_study(session, study_id, owner)
        spec = studies.stored_spec(study)
        columns = (Trial.number, Trial.params, Trial.state, Trial.metrics, Trial.error)
        query = select(*columns).where(Trial.study_id == study.id).order_by(Trial.number)
        rows = session.execute(query).all()
        trials = [
            {"number": r.number, "params": r.params, "state": r.state, "metrics": r.metrics,
             "curves": None}
            for r in rows
        ]  # fmt: skip
        report = build_report(
            spec,
            [studies.trial_record(r.params, r.state, r.metrics, r.error) for r in rows],
        )  # fmt: skip
        if kind == "curves":  # only the curves drawn: a study may hold thousands
            if trial is not None:
                wanted = [trial]
            else:
                found = plots.best_cell_trials(report, trials, report.objective)
                wanted = [t["number"] for t in found[2]] if found else []
            ids = dict(
                session.execute(
                    select(Trial.number, Trial.id).where(
                        Trial.study_id == study.id, Trial.number.in_(wanted)
                    )
                ).all()
            )
            curves = curves_for(session, ids.values())
            for t in trials:
                t["curves"] = curves[ids[t["number"]]] if t["number"] in ids else None
    try:
        body = plots.render(kind, format, report, trials, report.objective, trial)
    except plots.UnknownTrial as e:
        raise NotFound(str(e), field="trial") from e
    return Response(
        body,
        media_type=plots.FORMATS[format],
        headers={
            "Cache-Control": "no-store",  # the plot changes as trials finish
            "Content-Disposition": f'inline; filename="{study.id}-{kind}.{format}"',
        },
    )
