"""JSON request bodies parsed strictly: a key that appears twice in one object is an
error, not "the last one wins" (which would let a typo or a smuggled second value
silently change a study). Routers use `StrictJsonRoute` as their route class; the
duplicate surfaces as a 422 like any other malformed JSON (tests/test_hostile.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def _no_duplicate_keys(doc: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise json.JSONDecodeError(f"duplicate key {key[:80]!r}", doc, 0)
            out[key] = value
        return out

    return hook


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            text = (await self.body()).decode()
            self._json = json.loads(text, object_pairs_hook=_no_duplicate_keys(text))
        return self._json


class StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
