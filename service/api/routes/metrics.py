"""/metrics: Prometheus text (service/metrics.py; docs/api.md "Metrics")."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import DbDep, ReadOwner, SettingsDep
from service.api.offload import limiter
from service.metrics import exposition

router = APIRouter(tags=["health"])
SCRAPES = 2  # scrapes at once, in threads of their own (like /health's checks)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(db: DbDep, settings: SettingsDep, _: ReadOwner) -> Response:
    """Trials by state, the dispatch window, trial and dispatch histograms, request
    latency by route and status, database connections in use. With private studies, a
    valid token is needed (401 without)."""
    scrapes = limiter("metrics", SCRAPES)
    body = await anyio.to_thread.run_sync(exposition, db, settings, limiter=scrapes)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
