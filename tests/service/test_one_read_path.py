"""One read path (docs/DESIGN.md §3): the routes validate, call service/reads.py (or the
writes in service/studies.py) and map results to the wire models; they run no SQL of
their own. Checked on the source, so a new route that queries directly fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import service

ROUTES = sorted((Path(service.__file__).parent / "api" / "routes").glob("*.py"))
# What a session does to run a query; none of it belongs in a route.
QUERYING = {"execute", "scalar", "scalars", "query", "get", "add", "add_all", "delete"}


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
    found = [
        f"line {node.lineno}: imports {node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module
        and node.module.startswith("sqlalchemy")
        and node.module != "sqlalchemy.orm"  # types for annotations (Session, sessionmaker)
    ]
    sessions = _sessions(tree)
    found += [
        f"line {node.lineno}: {node.func.value.id}.{node.func.attr}()"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in sessions
        and node.func.attr in QUERYING
    ]
    return found


@pytest.mark.parametrize("path", ROUTES, ids=lambda p: p.name)
def test_a_route_runs_no_sql(path: Path):
    assert violations(path.read_text()) == [], f"{path.name}: queries go in service/reads.py"


def test_the_check_sees_a_query_and_a_query_builder():
    route = "from sqlalchemy import select\ndef r(db):\n    with db() as s:\n        s.execute(q)\n"
    assert violations(route) == ["line 1: imports sqlalchemy", "line 4: s.execute()"]
    assert len(ROUTES) >= 4  # the routes were found
