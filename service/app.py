"""The FastAPI application: `create_app()` for uvicorn (`samsweep api`)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from swagger_ui_bundle import swagger_ui_path

from samsweep import __version__
from samsweep.core.db import engine_for
from samsweep.core.queue import make_celery
from samsweep.core.settings import Settings, get_settings
from samsweep.core.spec import StudyPatch, StudySpec
from service import errors
from service.api.routes import health, metrics, pages
from service.api.routes import plots as plots_routes
from service.api.routes import studies as studies_routes
from service.cache import VersionedCache
from service.limits import BodySizeLimit
from service.metrics import RequestMetrics
from service.render import Renderer
from service.static_files import OnlyFiles
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
        app.state.renderer.close()

    app = FastAPI(
        title="samsweep",
        version=__version__,
        summary="Hyperparameter search for SAM: grids of rho x batch size x base optimizer.",
        lifespan=lifespan,
        docs_url=None,  # served below from the package: FastAPI's default loads a CDN
        redoc_url=None,
        # No redirect to the slash-less URL: Starlette builds its Location from the
        # client's Host header (`GET /studies/` with `Host: evil.example` answered 307 to
        # http://evil.example/studies). A trailing slash is simply another path: 404.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.celery = make_celery(settings)
    app.state.cache = VersionedCache(settings.cache_bytes)
    app.state.renderer = Renderer(
        settings.plot_workers, settings.plot_queue, settings.plot_timeout_seconds
    )
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    pool = engine_for(settings.resolved_database_url).pool
    app.add_middleware(RequestMetrics, pool_in_use=pool.checkedout)  # type: ignore[attr-defined]
    app.include_router(studies_routes.router)
    app.include_router(plots_routes.router)
    app.include_router(pages.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # The pages' script and style, from the package (service/static): nothing from a CDN.
    app.mount("/static", StaticFiles(packages=[("service", "static")]), name="static")
    _offline_docs(app)
    _document_spec_body(app)
    return app


def _document_spec_body(app: FastAPI) -> None:
    """POST /studies and PATCH /studies/{id} parse their bodies themselves
    (service/api/body.py: after authentication, off the loop), so FastAPI does not see
    the models: their schemas are added here, under components.schemas, where the
    routes' requestBody refers to them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _, defs = models_json_schema(
                [(StudySpec, "validation"), (StudyPatch, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _offline_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's files served by the API itself, so it works on an
    offline cluster (tests/service/test_openapi.py checks that the page loads nothing remote)."""
    static = "/docs/static"
    # Only the files /docs loads: the bundle's directory also holds Swagger's demo page,
    # which would make a browser fetch petstore.swagger.io (service/static_files.py).
    served = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
    app.mount(static, OnlyFiles(allowed=served, directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon-32x32.png",
        )
