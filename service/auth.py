"""Bearer tokens and study owners (docs/DESIGN.md §5).

With `SAMSWEEP_API_TOKENS` unset, the API is open (the embedded default on a laptop).
With tokens, every write needs `Authorization: Bearer <token>` and the study belongs
to the token's owner; with `SAMSWEEP_PRIVATE_STUDIES=true`, reads need a token too
and an owner sees only their own studies (another owner's id answers 404).
Tokens are compared as SHA-256 digests with `hmac.compare_digest`, against every
configured token, so the time taken does not depend on which (if any) matched.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from samsweep.core.settings import parse_tokens
from service.errors import ApiError


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@lru_cache(maxsize=8)
def _table(api_tokens: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((o, _digest(t)) for o, t in parse_tokens(api_tokens).items())


def owner_for(token: str | None, api_tokens: str | None) -> str | None:
    """The owner a request acts for, from its bearer token; None when no tokens are
    configured. Raises Unauthorized when tokens are configured and none of them is
    presented: `token` None is no Authorization header, "" one that is not a bearer
    token (`Basic ...`, `Bearer` with nothing after it)."""
    if not api_tokens:
        return None
    if token is None:
        raise Unauthorized("this call needs Authorization: Bearer <token>")
    if not token.strip():
        raise Unauthorized("the Authorization header must be Bearer <token>")
    presented = _digest(token.strip())
    owner = None
    for name, digest in _table(api_tokens):  # no early exit: constant time over the table
        if hmac.compare_digest(presented, digest):
            owner = name
    if owner is None:
        raise Unauthorized("invalid token")
    return owner
