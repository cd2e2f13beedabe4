"""The two tiers (tests/conftest.py): the directory sets the e2e marker, and a quick-tier
test that tries to start a server, a worker, a samsweep CLI process or a browser fails
before the process exists."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tiers import E2E_DIR, in_e2e, refused_process

PY = sys.executable


@pytest.mark.parametrize(
    "args,shell,what",
    [
        (["uvicorn", "service.app:app"], False, "uvicorn"),
        (["/venv/bin/uvicorn", "--port", "0"], False, "uvicorn"),
        ([PY, "-m", "uvicorn", "service.app:create_app"], False, "uvicorn"),
        (["celery", "-A", "worker.app", "worker"], False, "Celery"),
        ([PY, "-m", "celery", "worker"], False, "Celery"),
        (["samsweep", "up"], False, "samsweep"),
        (["/venv/bin/samsweep", "worker"], False, "samsweep"),
        ([PY, "-m", "samsweep.cli", "api", "--port", "1"], False, "samsweep"),
        ([PY, "-msamsweep.cli", "studies"], False, "samsweep"),
        ([PY, "-m", "service.api"], False, "the API"),
        ([PY, "-m", "worker.main"], False, "a worker"),
        (["/usr/bin/chromium", "--headless"], False, "Chromium"),
        (["/x/playwright/driver/node", "cli.js", "run-driver"], False, "Playwright"),
        (["redis-server", "--port", "0"], False, "Redis"),
        ("exec uvicorn service.app:app", True, "uvicorn"),
        ("cd /tmp && samsweep up --port 1", True, "samsweep"),
    ],
)
def test_what_the_quick_tier_may_not_start(args, shell, what):
    assert what in (refused_process(args, shell=shell) or "")


@pytest.mark.parametrize(
    "args,shell",
    [
        ([PY, "-c", "import service.app"], False),  # what tests/test_layering.py runs
        (["git", "status"], False),
        ([PY, "-m", "pytest", "--version"], False),
        ("echo uvicorn", False),  # one program named "echo uvicorn", not a shell line
    ],
)
def test_what_the_quick_tier_may_start(args, shell):
    assert refused_process(args, shell=shell) is None


def test_a_quick_test_that_starts_a_server_fails_before_it_starts(tmp_path):
    marker = tmp_path / "started"
    code = f"open({str(marker)!r}, 'w').close()"
    # `up --help` would only print help; the guard refuses the command line itself
    for start in (
        lambda: subprocess.Popen([PY, "-m", "samsweep.cli", "up", "--help"]),
        lambda: subprocess.run([PY, "-m", "uvicorn", "--help"], capture_output=True),
        lambda: subprocess.run(f'celery --help; {PY} -c "{code}"', shell=True),
    ):
        with pytest.raises(pytest.fail.Exception, match="quick tier but started .*tests/e2e/"):
            start()
    assert not marker.exists()
    # anything else still runs
    assert subprocess.run([PY, "-c", code], timeout=60).returncode == 0
    assert marker.exists()


def test_the_directory_sets_the_marker(request):
    assert not in_e2e(Path(__file__)) and not list(request.node.iter_markers("e2e"))
    assert in_e2e(E2E_DIR / "service" / "test_api.py")
    assert in_e2e(E2E_DIR / "test_e2e.py") and not in_e2e(E2E_DIR.parent / "test_e2e.py")


def test_a_quick_test_may_not_listen_for_connections():
    """An in-process server (uvicorn in a thread, http.server) is a server too."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(pytest.fail.Exception, match="quick tier but listened"):
            s.listen()


def test_a_server_started_from_a_thread_fails_the_test(pytester):
    """pytest.fail in a thread the test started would end that thread only: the guard
    fails the test itself (run in a pytest of its own, with this suite's hooks)."""
    pytester.makeconftest(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parents[2])!r})\n"
        "from tests.conftest import *  # noqa: F403  the hooks under test\n"
    )
    pytester.makepyfile(
        "import subprocess, sys, threading\n"
        "def test_starts_uvicorn_from_a_thread():\n"
        "    t = threading.Thread(target=lambda: subprocess.run("
        "[sys.executable, '-m', 'uvicorn', '--help']))\n"
        "    t.start(); t.join()\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*quick tier but started uvicorn*"])
