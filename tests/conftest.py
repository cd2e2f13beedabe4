"""Fixtures and hooks for every test; what the tests share lives in tests/support/.

Two tiers, set by directory: tests under tests/e2e/ start real processes (the API on
uvicorn, Celery workers, `samsweep` CLI processes, Chromium, compose emulation) and are
marked `e2e` here; every other test is the quick tier (`pytest -m "not e2e"`), which
talks to the real PostgreSQL and Redis at most and may start none of those processes:
trying fails the test (a subprocess of one of them, or listening on a socket: `_refuse`).

Each test gets a fresh PostgreSQL database and its own Redis queue name, so tests
never see each other's rows or messages. Server addresses come from
SAMSWEEP_TEST_POSTGRES (an admin URL) and SAMSWEEP_TEST_REDIS (tests/support/db.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.support.cli import VALID_YAML
from tests.support.db import REDIS, fresh_pg_database, require
from tests.support.tiers import in_e2e, refused_process

# tests/support/test_tiers.py runs these hooks in a pytest of its own
pytest_plugins = ["pytester"]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items) -> None:
    """Every test under tests/e2e/ is marked e2e: the directory is the marker."""
    for item in items:
        if in_e2e(item.path):
            item.add_marker(pytest.mark.e2e)


_quick_item: pytest.Item | None = None  # the quick-tier test running now, if any
_refused_in_threads: list[str] = []  # refusals a thread other than the test's met
_popen_init = subprocess.Popen.__init__
_listen = socket.socket.listen


def _refuse(what: str) -> None:
    assert _quick_item is not None
    message = (
        f"{_quick_item.nodeid} is in the quick tier but {what}. Tests that start real "
        "servers, workers, CLI processes or browsers belong under tests/e2e/ (marked e2e "
        "by their directory)."
    )
    if threading.current_thread() is not threading.main_thread():
        _refused_in_threads.append(message)  # failing that thread alone would pass the test
    pytest.fail(message, pytrace=False)


def _guarded_popen_init(self, args, *rest, **kwargs):
    if _quick_item is not None:
        shell = kwargs.get("shell", rest[7] if len(rest) > 7 else False)
        what = refused_process(args, shell=bool(shell))
        if what is not None:
            _refuse(f"started {what}: {args!r}")
    _popen_init(self, args, *rest, **kwargs)


def _guarded_listen(self, *args):
    if _quick_item is not None:  # an in-process server: uvicorn in a thread, http.server
        _refuse(f"listened for connections on {self.getsockname()!r}")
    return _listen(self, *args)


def pytest_configure(config) -> None:
    subprocess.Popen.__init__ = _guarded_popen_init  # type: ignore[method-assign]
    socket.socket.listen = _guarded_listen  # type: ignore[method-assign]


def pytest_unconfigure(config) -> None:
    subprocess.Popen.__init__ = _popen_init  # type: ignore[method-assign]
    socket.socket.listen = _listen  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A refusal met in a thread the test started fails the test all the same."""
    del _refused_in_threads[:]
    result = yield
    if _refused_in_threads:
        pytest.fail(_refused_in_threads[0], pytrace=False)
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The guard is on for the whole of each quick-tier test: its setup (module- and
    session-scoped fixtures included, which a function-scoped autouse fixture would miss),
    its call and its teardown."""
    global _quick_item
    _quick_item = None if in_e2e(item.path) else item
    try:
        yield
    finally:
        _quick_item = None


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    require("127.0.0.1", 6379, "Redis")
    return REDIS


@pytest.fixture(autouse=True)
def _no_settings_leak(monkeypatch):
    """In-process code under test reads settings the tests pass explicitly."""
    for k in list(os.environ):
        if k.startswith("SAMSWEEP_") and not k.startswith("SAMSWEEP_TEST_"):
            monkeypatch.delenv(k)
    from samsweep.core.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture
def spec_file(tmp_path):
    """A valid spec file (the CLI tests' `samsweep submit FILE`)."""
    path = tmp_path / "spec.yaml"
    path.write_text(VALID_YAML)
    return path
