"""The layering of docs/DESIGN.md §6: the API never imports torch (or the worker and the
trainer); the trainer never imports Optuna, Celery, FastAPI, SQLAlchemy or pydantic;
the worker's parent process does not import torch (it is imported inside the task).
Stated as import-linter contracts (pyproject.toml), which `make lint` checks
(lint-imports), and checked here by loading each layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# Lazy imports (the worker imports torch inside the task, so the process that spawns
# pool children never initializes CUDA) are what these check: what importing a layer
# really loads, in a fresh interpreter.
# docs/DESIGN.md §6: each layer imported in a fresh interpreter loads nothing
# forbidden (the API never imports torch)
@pytest.mark.parametrize(
    "module,absent",
    [
        ("service.app", {"torch", "trainer", "worker", "sklearn"}),
        ("worker.tasks", {"torch", "trainer"}),
        ("samsweep.cli", {"service", "worker", "fastapi", "torch", "trainer"}),  # lazily only
        (
            "samsweep.client",
            {"service", "worker", "fastapi", "starlette", "uvicorn", "torch", "trainer", "celery"},
        ),
        ("trainer", {"optuna", "celery", "fastapi", "sqlalchemy", "pydantic"}),
    ],
)
def test_importing_a_layer_loads_nothing_forbidden(module, absent):
    code = f"import sys, {module}; print(sorted(m for m in {sorted(absent)!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} loaded {out.stdout.strip()}"


# docs/cli.md "Python client": `from samsweep import Client` loads neither the API nor the
# worker (nor torch, FastAPI, Celery); `import samsweep` alone loads not even the client
def test_the_client_import_is_light():
    absent = ["service", "worker", "trainer", "torch", "fastapi", "starlette", "celery", "uvicorn"]
    code = (
        "import sys, samsweep; light = 'samsweep.client' not in sys.modules;"
        " from samsweep import Client; assert Client.__module__ == 'samsweep.client.api';"
        f" print(light, sorted(m for m in {absent!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True []", out.stdout
