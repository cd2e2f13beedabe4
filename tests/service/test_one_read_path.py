"""One read path (docs/DESIGN.md §3): the routes validate, call service/reads.py (or the
writes in service/studies.py) and map results to the wire models; they run no SQL of
their own. Checked on the source, so a new route that queries directly fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import service

ROUTES = sorted((Path(service.__file__).parent / "api" / "routes").glob("*.py"))
# What runs a query, on whatever object (a session, a connection, an engine)...
QUERYING = {"execute", "scalar", "scalars", "query", "exec_driver_sql"}
# ...and what does, on a session (elsewhere, e.g. dict.get, it is not a query).
ON_A_SESSION = {"get", "add", "add_all", "delete", "merge", "refresh", "flush", "commit"}


def _sessions(tree: ast.AST) -> set[str]:
    """Names bound by `with db() as <name>` (the routes' only way to a session)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                if isinstance(item.optional_vars, ast.Name):
                    names.add(item.optional_vars.id)
    return names


def violations(source: str) -> list[str]:
    """Where this module imports a query builder or has a session run a query."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        found += [
            f"line {node.lineno}: imports {m}"
            for m in modules
            # types for annotations only (Session, sessionmaker)
            if m.split(".")[0] == "sqlalchemy" and m != "sqlalchemy.orm"
        ]
    sessions = _sessions(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            on = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            name = node.func.attr
            if name in QUERYING or (name in ON_A_SESSION and on in sessions):
                found.append(f"line {node.lineno}: {on or '...'}.{name}()")
    return found


@pytest.mark.parametrize("path", ROUTES, ids=lambda p: p.name)
def test_a_route_runs_no_sql(path: Path):
    assert violations(path.read_text()) == [], f"{path.name}: queries go in service/reads.py"


def test_the_check_sees_a_query_and_a_query_builder():
    route = "from sqlalchemy import select\ndef r(db):\n    with db() as s:\n        s.execute(q)\n"
    assert violations(route) == ["line 1: imports sqlalchemy", "line 4: s.execute()"]
    helper = "import sqlalchemy.sql\ndef f(conn, d):\n    d.get(1)\n    return conn.scalars(q)\n"
    assert violations(helper) == ["line 1: imports sqlalchemy.sql", "line 4: conn.scalars()"]
    assert len(ROUTES) >= 4  # the routes were found
