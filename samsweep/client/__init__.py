"""The client side of samsweep: a spec file checked locally, the API over HTTP, and the
terminal's progress bar and tables.

It sits above the core (it uses `samsweep.spec`) and below the CLI; importing it loads
neither the API nor the worker, nor torch, FastAPI or Celery (pyproject.toml's
import-linter contracts, tests/test_layering.py).
"""

from samsweep.client.api import (
    Refused,
    ServerExited,
    all_trials,
    cancel,
    cancel_command,
    connect,
    follow,
    is_up,
    results,
    submit,
    wait_stopped,
    wait_until_up,
)
from samsweep.client.specfile import SpecError, load_spec
from samsweep.client.tables import format_results

__all__ = [
    "Refused",
    "ServerExited",
    "SpecError",
    "all_trials",
    "cancel",
    "cancel_command",
    "connect",
    "follow",
    "format_results",
    "is_up",
    "load_spec",
    "results",
    "submit",
    "wait_stopped",
    "wait_until_up",
]
