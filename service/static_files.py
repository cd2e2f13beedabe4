"""Static files served from an allow-list: the API serves what its pages load, nothing
else a bundled directory happens to hold.

`swagger-ui-bundle`'s directory also ships Swagger's demo page (index.html and
swagger-initializer.js, which make a browser fetch petstore.swagger.io), a Jinja
template and source maps; served as a whole directory, any of them would answer at
/docs/static/. `OnlyFiles` answers 404 for every name not in its list, before
Starlette's StaticFiles looks at the disk (which already refuses `..` and symlinks
that leave the directory)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from starlette.staticfiles import StaticFiles


class OnlyFiles(StaticFiles):
    """StaticFiles that serves exactly the file names in `allowed` (no subdirectories)."""

    def __init__(self, *, allowed: Collection[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allowed = frozenset(allowed)

    def lookup_path(self, path: str) -> tuple[str, Any]:
        if path not in self.allowed:
            return "", None  # StaticFiles' own "not found": a 404 like any unknown route
        return super().lookup_path(path)
