"""FastAPI dependencies: settings, the database's session factory, the Celery client,
and who is calling.

Routes open their session themselves (`with db() as session:`), inside the endpoint,
never through a `yield` dependency. A sync endpoint and a sync `yield` dependency's
teardown run as separate calls into the same threadpool: under load every thread can
hold a request that waits for a pooled connection while the teardowns that would
return connections wait for a thread, and nothing is answered until the pool times
out (fastapi#3205, #12066). Opened inside the endpoint, a connection is taken and
given back in one thread call, so more concurrent requests than pooled connections
queue instead of deadlocking (tests/e2e/service/test_load.py). The dependencies themselves do no
I/O, so they are `async def`: a sync one would cost each request a threadpool hop.
"""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from samsweep.core.db import session_factory
from samsweep.core.settings import Settings, reveal
from service.auth import owner_for
from service.cache import VersionedCache

# Declares the security scheme in OpenAPI; the token itself is checked by owner_for.
bearer = HTTPBearer(
    auto_error=False,
    description="Needed for writes when SAMSWEEP_API_TOKENS is set, and for reads "
    "too with SAMSWEEP_PRIVATE_STUDIES=true.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> sessionmaker[Session]:
    return session_factory(request.app.state.settings.resolved_database_url)


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_cache(request: Request) -> VersionedCache:
    return request.app.state.cache


def _token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The bearer token; "" for an Authorization header that is not `Bearer <token>`
    (HTTPBearer, with auto_error=False, answers None for those too), None for none."""
    if credentials is not None:
        return credentials.credentials
    return "" if request.headers.get("authorization") is not None else None


async def owner_for_write(request: Request, credentials: Credentials) -> str | None:
    """The owner of a write call (401 without a valid token when tokens are configured)."""
    tokens = reveal(request.app.state.settings.api_tokens)
    return owner_for(_token(request, credentials), tokens)


async def owner_for_read(request: Request, credentials: Credentials) -> str | None:
    """The owner whose studies a read may see; None = all (studies are not private)."""
    settings = request.app.state.settings
    if not settings.private_studies:
        return None
    return owner_for(_token(request, credentials), reveal(settings.api_tokens))


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DbDep = Annotated[sessionmaker[Session], Depends(get_db)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
CacheDep = Annotated[VersionedCache, Depends(get_cache)]
# The owner a call acts for (None: no tokens configured, or public reads).
WriteOwner = Annotated[str | None, Depends(owner_for_write)]
ReadOwner = Annotated[str | None, Depends(owner_for_read)]
