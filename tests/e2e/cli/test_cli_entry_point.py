"""The CLI as a user runs it, as real processes: `samsweep up` stops everything it
started on SIGTERM, and the real entry point (`python -m samsweep.cli`) answers bad input
and misbehaving servers with one line and its exit code, never a traceback. (The same
answers in process, through `main`: tests/cli/test_cli.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.support.cli import (
    MALFORMED,
    THROUGH_THE_ENTRY_POINT,
    VALID_YAML,
    Misbehaving,
    args_for,
    one_line,
)
from tests.support.http import free_port, wait_for
from tests.support.processes import wait_healthy


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# docs/cli.md "The CLI": `samsweep up`: the worker never outlives it (SIGTERM)
def test_up_stops_its_worker_on_sigterm(deployment_factory):
    d = deployment_factory()
    port = free_port()
    up = d.spawn("up", "up", "--port", str(port))  # its own process group
    wait_healthy(f"http://127.0.0.1:{port}", up)
    # Celery logs "<name> ready." once its consumer runs, i.e. after the pool child started.
    wait_for(lambda: " ready." in up.log_path.read_text(), 60, d, "the worker to be ready")
    up.send_signal(signal.SIGTERM)  # only `up` itself, as a service manager would
    up.wait(timeout=30)
    wait_for(lambda: not _group_alive(up.pid), 30, d, "the processes of `samsweep up` to end")


def test_a_parse_error_from_the_real_command_has_no_traceback(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(VALID_YAML.replace("train: {epochs: 1", "train: {epochs: 1]"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMSWEEP_")}
    result = subprocess.run(
        [sys.executable, "-m", "samsweep.cli", "run", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"samsweep: {path}:8:"), result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert not (tmp_path / ".samsweep").exists()


def _cli(*args: str, cwd=None, timeout: float = 60) -> tuple[int, str]:
    """The real entry point, as a user runs it (no SAMSWEEP_* from the test's environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMSWEEP_")}
    result = subprocess.run(
        [sys.executable, "-m", "samsweep.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    "how,command",
    [
        ("html 200", ["studies"]),
        ("garbage JSON", ["submit"]),
        ("huge streamed", ["studies"]),
        ("500 with escapes", ["report"]),
        ("silent", ["status"]),
        ("html 200", ["run"]),
    ],
)
def test_a_misbehaving_server_through_the_entry_point(tmp_path, spec_file, how, command):
    server = Misbehaving(how)
    try:
        one_line(_cli(*args_for(command, spec_file, server.url), cwd=tmp_path), 1)
    finally:
        server.close()
    assert not (tmp_path / ".samsweep").exists()  # `run --server` never starts its own


def test_an_unreachable_server_through_the_entry_point(tmp_path, spec_file):
    for url in (f"http://127.0.0.1:{free_port()}", "http://[::1"):
        one_line(_cli(*args_for(["studies"], spec_file, url), cwd=tmp_path), 1)


# The representative few of tests/cli/test_cli.py's malformed spec files (each checked
# there in process), through the real entry point: one line, exit 2, nothing started
@pytest.mark.parametrize("command", ["submit", "run"])
@pytest.mark.parametrize(
    "case,name,make,says",
    [m for m in MALFORMED if m[0] in THROUGH_THE_ENTRY_POINT],
    ids=[m[0] for m in MALFORMED if m[0] in THROUGH_THE_ENTRY_POINT],
)
def test_malformed_spec_files_through_the_entry_point(tmp_path, command, case, name, make, says):
    path = make(tmp_path / name)
    dead = f"http://127.0.0.1:{free_port()}"
    args = [command, str(path), "--server", dead]
    if command == "run":
        args += ["--state-dir", str(tmp_path / "state")]
    assert says in one_line(_cli(*args, cwd=tmp_path, timeout=30), 2)
    assert not (tmp_path / "state").exists()
