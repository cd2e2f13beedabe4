"""The layering of DESIGN.md §6: the API never imports torch (or the worker and the
trainer); the trainer never imports Optuna, Celery, FastAPI, SQLAlchemy or pydantic;
the worker's parent process does not import torch (it is imported inside the task)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "trainer": {
        "optuna",
        "celery",
        "kombu",
        "fastapi",
        "starlette",
        "sqlalchemy",
        "alembic",
        "pydantic",
        "redis",
        "samsweep",
        "service",
        "worker",
        "migrations",
    },
    "service": {"torch", "trainer", "worker", "migrations", "sklearn"},
    "samsweep": {"torch", "trainer", "fastapi", "starlette", "service", "sklearn"},
    "worker": {"service", "fastapi", "migrations"},
}
# The CLI is the composition root: it starts the API or the worker, inside functions.
LAZY_ONLY = {
    ("samsweep", "cli.py"): {"worker", "service"},
    ("worker", "runner.py"): {"trainer", "torch"},
    ("worker", "tasks.py"): {"worker"},
}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_their_layer_allows(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        lazy_ok = LAZY_ONLY.get((package, path.name), set())
        everywhere = _imports(path, top_level_only=False) - lazy_ok
        assert not everywhere & FORBIDDEN[package], (
            f"{path.relative_to(ROOT)} imports {everywhere & FORBIDDEN[package]}"
        )
        top = _imports(path, top_level_only=True)
        assert not top & (FORBIDDEN[package] | lazy_ok) - {package}, path


@pytest.mark.parametrize(
    "module,absent",
    [
        ("service.app", {"torch", "trainer", "worker", "sklearn"}),
        ("worker.tasks", {"torch", "trainer"}),
        ("trainer", {"optuna", "celery", "fastapi", "sqlalchemy", "pydantic"}),
    ],
)
def test_importing_a_layer_loads_nothing_forbidden(module, absent):
    code = f"import sys, {module}; print(sorted(m for m in {sorted(absent)!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} loaded {out.stdout.strip()}"
