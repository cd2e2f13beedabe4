"""samsweep: hyperparameter search for SAM.

Three layers, each importing only those below it (pyproject.toml's import-linter
contracts, tests/test_layering.py):

- `samsweep.core`: what both the API (`service`) and the workers (`worker`) use (the
  spec, its admission checks, the report, the wire models, the tables, Optuna's
  storage, the queue, the settings). It never imports torch, FastAPI, the API or the
  worker;
- `samsweep.client`: `Client`, the API over HTTP, and a spec file checked locally; it
  loads neither the API nor the worker, nor torch, FastAPI or Celery.
  `from samsweep import Client` imports it on first use (so `import samsweep` alone
  stays light);
- `samsweep.cli`: the `samsweep` command and its terminal tables, the composition
  root, the one place that starts the API (`service.app`) and the worker
  (`worker.app`).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from samsweep.client import Client


def __getattr__(name: str) -> Any:
    if name == "Client":
        from samsweep.client import Client

        return Client
    raise AttributeError(f"module 'samsweep' has no attribute {name!r}")
