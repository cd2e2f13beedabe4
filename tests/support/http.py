"""Ports, and waiting on what real servers do."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    cond: Callable[[], object],
    timeout: float,
    source,
    what: str,
    poll: float = 0.2,
    process: subprocess.Popen | None = None,
    ignore: tuple[type[Exception], ...] = (),
):
    """The tests' one wait: poll `cond` until it returns something truthy (returned).
    Fails the test with `source.logs()` (a Deployment, a compose Emulation) on timeout,
    or at once if `process` exits first; exceptions in `ignore` count as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(
                f"{process.args} exited with {process.returncode} waiting for {what}\n"
                f"{source.logs()}"
            )
        try:
            if value := cond():
                return value
        except ignore:
            pass
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{source.logs()}")


class NoLogs:
    def logs(self) -> str:
        return ""


def wait_study(api: str, study_id: str, timeout: float = 240, d=None) -> dict:
    """Poll the study until it is complete or cancelled; its detail."""

    def finished() -> dict | None:
        detail = httpx.get(f"{api}/studies/{study_id}", timeout=10).json()
        return detail if detail["status"] in ("complete", "cancelled") else None

    return wait_for(finished, timeout, d or NoLogs(), f"study {study_id} to finish", poll=0.5)
