"""The study spec in a POST body: read after the caller is authenticated, parsed and
validated off the event loop, and refused early when it cannot be a spec.

- **Authentication first.** `study_spec` depends on the write owner, so without a valid
  token the answer is 401 before a byte of the body is read or parsed.
- **Off the loop, bounded.** At most `BODIES` bodies are read into memory at once per
  process (the next `WAITING` wait unread; beyond, 503 with Retry-After), and JSON
  parsing and pydantic validation run in a worker thread, at most `PARSERS` at once: a
  flood of large bodies costs bounded memory and queues there, while the loop keeps
  answering everything else.
- **Strict JSON.** A key that appears twice in one object is an error, not "the last
  one wins" (a typo or a smuggled second value would silently change a study). An
  object with more than `MAX_KEYS` keys cannot be a spec (the largest has 15 fields),
  so it is refused as it is parsed, before validation would list every unknown key;
  nesting too deep for the parser is a 422 too.

Every refusal is a RequestValidationError, answered by service/errors.py as a 422 of
the one error shape (with at most `MAX_DETAILS` details).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from samsweep.core.spec import StudySpec
from service.api.deps import WriteOwner
from service.api.offload import limiter
from service.errors import Busy, body_errors

T = TypeVar("T")
MAX_KEYS = 64
PARSERS = 2  # parse/validate threads per process: the other threads stay free for reads
# Bodies read into memory at once per process (each up to SAMSWEEP_MAX_BODY_BYTES); more
# wait unread, and beyond WAITING of those a fast 503 with Retry-After.
BODIES, WAITING = 8, 64


class _Refused(ValueError):
    pass


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_KEYS:
        raise _Refused(f"an object with {len(pairs)} keys; a spec object has at most {MAX_KEYS}")
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _invalid_json(position: int, reason: str) -> RequestValidationError:
    # The shape FastAPI gives its own JSON errors, so the one handler words them alike.
    return RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ("body", position),
                "msg": "JSON decode error",
                "ctx": {"error": reason},
            }
        ]  # fmt: skip
    )


def parse_json(body: bytes) -> Any:
    """The strict JSON document in `body`, or RequestValidationError saying why not."""
    try:
        text = body.decode()
    except UnicodeDecodeError as e:
        raise _invalid_json(e.start, "not UTF-8 text") from None
    try:
        return json.loads(text, object_pairs_hook=_strict_object)
    except json.JSONDecodeError as e:
        raise _invalid_json(e.pos, e.msg) from None
    except _Refused as e:
        raise _invalid_json(0, str(e)) from None
    except RecursionError:
        raise _invalid_json(0, "nested too deeply") from None


def parse_spec(body: bytes) -> StudySpec:
    """The validated spec in `body`, or RequestValidationError saying why not."""
    data = parse_json(body)
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise body_errors(e) from None
    except RecursionError:
        raise _invalid_json(0, "nested too deeply") from None


def parse_patch(body: bytes) -> dict[str, Any]:
    """A PATCH body: a JSON object in the spec's shape (applied to the stored spec by
    samsweep.core.spec.patched, which says what a patch may hold)."""
    data = parse_json(body)
    if not isinstance(data, dict):
        message = 'a patch is a JSON object, e.g. {"seeds": [0, 1, 2]}'
        raise RequestValidationError([{"type": "dict_type", "loc": ("body",), "msg": message}])
    return data


async def _read(request: Request, parse: Callable[[bytes], T]) -> T:
    bodies = limiter("bodies", BODIES)
    if bodies.statistics().tasks_waiting >= WAITING:  # waiting costs no body in memory
        raise Busy(f"{WAITING} request bodies are waiting to be read; retry shortly")
    async with bodies:
        body = await request.body()
        return await anyio.to_thread.run_sync(parse, body, limiter=limiter("parse", PARSERS))


async def study_spec(request: Request, owner: WriteOwner) -> StudySpec:
    """The request's spec, once `owner` (a valid token, where tokens are configured) is
    known: the body is read only then (at most `BODIES` at once), and parsed in a thread."""
    return await _read(request, parse_spec)


async def study_patch(request: Request, owner: WriteOwner) -> dict[str, Any]:
    """A PATCH's body, read and parsed as a spec's is (`study_spec`)."""
    return await _read(request, parse_patch)


SpecBody = Annotated[StudySpec, Depends(study_spec)]
PatchBody = Annotated[dict[str, Any], Depends(study_patch)]
# The request body as OpenAPI documents it (parsed by `study_spec`, not by FastAPI).
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StudySpec"}}},
    }
}
OPENAPI_PATCH = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StudyPatch"}}},
    }
}
