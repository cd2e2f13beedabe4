"""`samsweep up` as a user runs it: the embedded default starts, serves, and on
SIGTERM stops everything it started (no orphaned worker keeps training)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import free_port, wait_healthy


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_up_stops_its_worker_on_sigterm(deployment_factory):
    d = deployment_factory()
    port = free_port()
    up = d.spawn("up", "up", "--port", str(port))  # its own process group
    wait_healthy(f"http://127.0.0.1:{port}", up)
    time.sleep(2)  # the worker is up by now (its spawn pool child too)
    up.send_signal(signal.SIGTERM)  # only `up` itself, as a service manager would
    up.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _group_alive(up.pid):
        if time.monotonic() > deadline:
            pytest.fail(f"processes of `samsweep up` outlived it:\n{d.logs()}")
        time.sleep(0.2)
