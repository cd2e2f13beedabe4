"""The two tiers. Tests under tests/e2e/ start real processes (uvicorn, Celery workers,
`samsweep` CLI processes, Chromium, compose emulation) and are marked `e2e` by their
directory; every other test is the quick tier and may start none of them.

`refused_process` names what a command line would start that the quick tier may not;
tests/conftest.py wraps subprocess.Popen with it for every test outside tests/e2e/."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parents[1] / "e2e"

# Executables (by base name) that are servers, workers or browsers.
SERVERS = {
    "uvicorn": "uvicorn",
    "gunicorn": "gunicorn",
    "celery": "a Celery worker",
    "chromium": "Chromium",
    "chromium-browser": "Chromium",
    "chrome": "Chromium",
    "headless_shell": "Chromium",
    "redis-server": "a Redis server",
    "postgres": "a PostgreSQL server",
    "docker": "docker",
}
# `python -m X...` where X's top-level package is one of these.
MODULES = {
    "uvicorn": "uvicorn",
    "celery": "a Celery worker",
    "service": "the API (python -m service...)",
    "worker": "a worker (python -m worker...)",
    "samsweep": "a samsweep CLI process",
    "playwright": "Playwright's browser driver",
}


def in_e2e(path: Path) -> bool:
    return E2E_DIR in Path(path).resolve().parents


def _argv(args, shell: bool) -> list[str]:
    if isinstance(args, (str, bytes, os.PathLike)):
        text = os.fsdecode(args)
        if not shell:
            return [text]
        try:
            return shlex.split(text)
        except ValueError:
            return text.split()
    return [os.fsdecode(a) for a in args]


def refused_process(args, shell: bool = False) -> str | None:
    """What `subprocess.Popen(args, shell=shell)` would start that the quick tier may not
    start (None: nothing). Every word is looked at, so `sh -c "uvicorn ..."` counts too."""
    argv = _argv(args, shell)
    for i, word in enumerate(argv):
        name = os.path.basename(word)
        if name in SERVERS:
            return SERVERS[name]
        if name == "samsweep":
            return "a samsweep CLI process"
        if "playwright" in word and "driver" in word:
            return "Playwright's browser driver"
        if word == "-m" and i + 1 < len(argv):
            top = argv[i + 1].split(".")[0]
            if top in MODULES:
                return MODULES[top]
        if word.startswith("-m") and len(word) > 2 and word[2:].split(".")[0] in MODULES:
            return MODULES[word[2:].split(".")[0]]
    return None
