"""The browser's view: the index at `/`, a study's page at `/studies/{id}/page`, and the
index's data at `/overview`.

The HTML is rendered from Jinja2 templates shipped in the package (service/templates,
autoescaped), its script and style served from the package (service/static, at
/static): nothing is loaded from another host, so it works on an offline cluster, and
a Content-Security-Policy holds the page to its own origin.

The HTML carries the page's frame and, for public studies, the study's name; the data
(counts, report, trials, plots) is fetched by the page's script from the JSON and plot
routes, and fetched again every 2 s while the study runs. With private studies
(SAMSWEEP_PRIVATE_STUDIES) the HTML holds nothing of any study, not even whether it
exists: the script asks for a bearer token, keeps it in the tab's sessionStorage and
sends it as `Authorization` on its fetches (plots are fetched as blobs), so a reader
sees exactly what the API shows that token's owner.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from samsweep.core.ids import STUDY_ID
from samsweep.core.wire import Overview, OverviewItem
from service import reads
from service.api.deps import DbDep, ReadOwner
from service.errors import NotFound, responses

router = APIRouter(tags=["pages"])

templates = Environment(
    loader=PackageLoader("service", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)

# Only this origin: no CDN, no inline script (the page's settings are data- attributes).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HTML_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _html(request: Request, template: str, **context: Any) -> HTMLResponse:
    settings = request.app.state.settings
    body = templates.get_template(template).render(private=settings.private_studies, **context)
    return HTMLResponse(body, headers=HTML_HEADERS)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(request: Request) -> HTMLResponse:
    """The studies, newest first, each with its status, progress and best cell."""
    return _html(request, "index.html")


@router.get(
    "/studies/{study_id}/page",
    response_model=None,  # HTML; its errors are the API's JSON error shape
    responses={
        200: {"content": {"text/html": {}}, "description": "the page"},
        **responses(404, 422, 503),
    },
)
def study_page(study_id: str, request: Request, db: DbDep) -> HTMLResponse:
    """The study's page: progress, the report table, the plots, the trials, downloads;
    live while the study runs. With private studies the page asks for a token and
    shows nothing until the API accepts it."""
    if not STUDY_ID.fullmatch(study_id):
        raise NotFound(f"no study with id {study_id[:64]!r}")
    name = None
    if not request.app.state.settings.private_studies:
        with db() as session:
            name = reads.get_study(session, study_id).name
    return _html(request, "study.html", study_id=study_id, name=name)


@router.get("/overview", response_model=Overview, responses=responses(401, 422, 503))
def overview(
    db: DbDep,
    owner: ReadOwner,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Overview:
    """The index's data: the studies, newest first, with counts per state, progress and
    the best cell's mean objective (the cell /best selects)."""
    with db() as session:
        rows, total = reads.list_studies(session, limit, offset, owner)
        ids = [s.id for s in rows]
        counts = reads.state_counts_many(session, ids)
        best = reads.best_means(session, ids)
    items = [
        OverviewItem(
            id=s.id, name=s.name, status=reads.study_status(s, counts[s.id]),
            n_trials=s.n_trials, created_at=s.created_at, counts=counts[s.id],
            progress=reads.progress(s.n_trials, counts[s.id]),
            objective=str(s.spec.get("objective", "")), best_mean=best.get(s.id),
            page=f"/studies/{s.id}/page",
        )
        for s in rows
    ]  # fmt: skip
    return Overview(items=items, total=total, limit=limit, offset=offset)
