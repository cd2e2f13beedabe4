"""/health: liveness with its dependencies (database, broker)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Response

from samsweep.core.wire import Health
from service import reads
from service.api.deps import CeleryDep, DbDep
from service.api.offload import limiter

router = APIRouter(tags=["health"])
# /health's checks run in threads of their own, never queued behind the threadpool that
# serves the other routes: a saturated API still says whether it is alive.
CHECKS = 4


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(db: DbDep, celery: CeleryDep, response: Response) -> Health:
    """200 when the database and the broker answer, 503 naming the one that does not."""
    checks = limiter("health", CHECKS)
    return await anyio.to_thread.run_sync(_check, db, celery, response, limiter=checks)


def _check(db: DbDep, celery: CeleryDep, response: Response) -> Health:
    database = broker = "ok"
    try:
        with db() as session:
            reads.ping(session)
    except Exception as e:  # any failure here means "not healthy", never a 500
        database = f"unavailable: {type(e).__name__}"
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as e:
        broker = f"unavailable: {type(e).__name__}"
    ok = database == "ok" and broker == "ok"
    if not ok:
        response.status_code = 503
    return Health(status="ok" if ok else "unavailable", database=database, broker=broker)
