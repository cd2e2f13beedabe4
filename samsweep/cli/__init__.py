"""The `samsweep` command line, on top of everything else: the composition root, the one
place that starts the API (`service.app`) and the worker (`worker.app`), each imported
inside the command that starts it. Nothing below imports it (pyproject.toml's
import-linter contracts). `python -m samsweep.cli` runs it too (__main__.py)."""

from samsweep.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
