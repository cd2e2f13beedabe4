"""HTTP validators for what is derived from a study's trials (reports, /best, plots).

The ETag is a digest of the study's version (service/reads.py `Snapshot`) and what was
asked for, so a client that sends it back in `If-None-Match` gets a 304 without the
answer being built or sent. Answers are `Cache-Control: private, no-cache`: a browser or
client may keep them but must revalidate (a study changes as trials finish), and shared
caches never keep them (they may be private studies).
"""

from __future__ import annotations

import hashlib

from fastapi import Request, Response

CACHE_CONTROL = "private, no-cache"


def etag(version: str, *what: object) -> str:
    digest = hashlib.sha256("|".join(map(str, (version, *what))).encode()).hexdigest()
    return f'"{digest[:32]}"'


def validators(tag: str) -> dict[str, str]:
    return {"ETag": tag, "Cache-Control": CACHE_CONTROL, "Vary": "Authorization"}


def not_modified(request: Request, tag: str) -> bool:
    """Whether the request's If-None-Match names `tag` (weak comparison, RFC 9110 13.1.2)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == tag for t in header[:4096].split(","))


class NotModified(Response):
    def __init__(self, tag: str) -> None:
        super().__init__(status_code=304, headers=validators(tag))


def cached_json(body: bytes, tag: str) -> Response:
    return Response(body, media_type="application/json", headers=validators(tag))
