"""The API's error hierarchy and its one mapping to HTTP.

Every error answer has the same shape:
``{"error": {"code": str, "message": str, "field": str | null, "details": [...]}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from samsweep.core.wire import ErrorResponse

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 500
    code = "internal"
    headers: dict[str, str] = {}  # noqa: RUF012  (read only)

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidSpec(ApiError):
    status, code = 422, "invalid_spec"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class IdempotencyMismatch(ApiError):
    status, code = 422, "idempotency_key_reused"


class Busy(ApiError):
    """A bounded resource of this API process is full: retry shortly."""

    status, code = 503, "busy"
    headers = {"Retry-After": "2"}  # noqa: RUF012


class LimitExceeded(ApiError):
    """An owner's quota (SAMSWEEP_MAX_STUDIES_PER_OWNER, ..._PENDING_TRIALS_PER_OWNER)."""

    status, code = 429, "limit_exceeded"


def body_errors(e: ValidationError) -> RequestValidationError:
    """A body's validation errors as FastAPI's own (located under "body"), answered by the
    one handler below."""
    errors = e.errors(include_url=False, include_input=False, include_context=False)
    return RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors])


# An error answer stays small whatever the request: a body with thousands of faults gets
# the first MAX_DETAILS, each field name and message cut to these lengths.
MAX_DETAILS, MAX_FIELD_CHARS, MAX_MESSAGE_CHARS = 20, 200, 500


def error_body(
    code: str, message: str, field: str | None = None, details: list[Any] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, "details": details or []}}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return _cut(".".join(parts) or "body", MAX_FIELD_CHARS)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.field), status_code=exc.status, headers=exc.headers
    )


def _detail(e: dict[str, Any]) -> dict[str, str]:
    loc, message = tuple(e.get("loc", ())), e.get("msg", "invalid").removeprefix("Value error, ")
    if e.get("type") == "json_invalid":  # loc is (body, character offset): say what and where
        reason = (e.get("ctx") or {}).get("error", "")
        text = f"{message} at character {loc[-1]}: {reason}"
        return {"field": "body", "message": _cut(text, MAX_MESSAGE_CHARS)}
    return {"field": _field(loc), "message": _cut(message, MAX_MESSAGE_CHARS)}


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    details = [_detail(e) for e in errors[:MAX_DETAILS]]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}"
    if len(errors) > MAX_DETAILS:
        message += f" (and {len(errors) - 1} more errors; the first {MAX_DETAILS} in details)"
    return JSONResponse(error_body("invalid_spec", message, first["field"], details), 422)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
        exc.status_code, "http_error"
    )
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse(
        error_body("database_unavailable", message), status_code=503, headers={"Retry-After": "5"}
    )


async def _database_unavailable(_: Request, exc: DBAPIError) -> JSONResponse:
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        log.warning("database unavailable: %s", exc.orig)
        return _unavailable("the database is unavailable; retry shortly")
    log.exception("database error")
    return JSONResponse(error_body("internal", "internal error"), status_code=500)


async def _pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
    # Every pooled connection stayed busy for the pool's whole timeout: overload, not a bug.
    log.warning("database pool exhausted: %s", exc)
    return _unavailable("the database is overloaded; retry shortly")


async def _client_gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
    # The client closed while its body was being read, was closed on for sending it too
    # slowly (service/server.py), or left while its request waited its turn
    # (service/api/offload.py): nobody to answer, nothing went wrong here.
    log.info("client went away before its request was answered")
    return JSONResponse(error_body("request_timeout", "the request body did not arrive"), 408)


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    # A defect: logged with its traceback; the client gets the error shape, not text/plain.
    log.error("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal", "internal error"), status_code=500)


RESPONSES = {
    401: "no valid bearer token (tokens are configured)",
    404: "no such study (or not yours, with private studies)",
    409: "a conflict: a concurrent create with this Idempotency-Key failed (retry), or the "
    "stored spec no longer validates",
    413: "request body over SAMSWEEP_MAX_BODY_BYTES",
    422: "invalid input: `field` names the first field at fault, `details` up to 20",
    429: "an owner's limit is reached (unfinished studies, or queued and running trials): "
    "the message names the setting",
    503: "the database is unavailable or overloaded, or this API process is busy; retry "
    "after Retry-After seconds",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for these error statuses, all with the one error shape."""
    return {c: {"model": ErrorResponse, "description": RESPONSES[c]} for c in codes}


def install(app: FastAPI) -> None:
    # FastAPI's decorator, applied directly: it registers exactly as add_exception_handler
    # does, whose type (Starlette's) accepts only handlers taking any Exception.
    app.exception_handler(ApiError)(_api_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(DBAPIError)(_database_unavailable)
    app.exception_handler(PoolTimeout)(_pool_exhausted)
    app.exception_handler(ClientDisconnect)(_client_gone)
    app.exception_handler(Exception)(_internal)
