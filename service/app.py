"""The FastAPI application: `create_app()` for uvicorn (`samsweep api`)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from samsweep import __version__
from samsweep.queue import make_celery
from samsweep.settings import Settings, get_settings
from service import errors
from service.api.routes import health
from service.api.routes import studies as studies_routes
from service.limits import BodySizeLimit
from service.sweeper import sweep_forever


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.tokens() and settings.private_studies:  # tokens() checks their format
        raise ValueError("SAMSWEEP_PRIVATE_STUDIES needs SAMSWEEP_API_TOKENS")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        sweeper = threading.Thread(
            target=sweep_forever, args=(settings, app.state.celery, stop), daemon=True
        )
        sweeper.start()
        yield
        stop.set()

    app = FastAPI(
        title="samsweep",
        version=__version__,
        summary="Hyperparameter search for SAM: grids of rho x batch size x base optimizer.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.celery = make_celery(settings)
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(studies_routes.router)
    app.include_router(health.router)
    return app
