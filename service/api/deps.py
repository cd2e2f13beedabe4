"""FastAPI dependencies: settings, a database session per request, the Celery client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from samsweep.db import session_factory
from samsweep.settings import Settings
from service.auth import owner_for


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with session_factory(request.app.state.settings.resolved_database_url)() as session:
        yield session


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def writer(request: Request, authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The owner of a write call (401 without a valid token when tokens are configured)."""
    return owner_for(authorization, request.app.state.settings.api_tokens)


def reader(request: Request, authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The owner whose studies a read may see; None = all (studies are not private)."""
    settings = request.app.state.settings
    if not settings.private_studies:
        return None
    return owner_for(authorization, settings.api_tokens)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
WriterDep = Annotated[str | None, Depends(writer)]
ReaderDep = Annotated[str | None, Depends(reader)]
