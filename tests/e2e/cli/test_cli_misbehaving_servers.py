"""The CLI in process (through `main`, what the entry point calls) against a local HTTP
server that answers wrongly: a real server on a socket, so these tests are in the e2e
tier (tests/conftest.py: the quick tier listens on no socket). One line and exit 1,
never a traceback. (Through the real entry point: test_cli_entry_point.py.)"""

from __future__ import annotations

import pytest

from tests.support.cli import (
    COMMANDS,
    MISBEHAVIOURS,
    Misbehaving,
    args_for,
    in_process,
    one_line,
)


# docs/cli.md "Exit codes": no traceback for bad input; a one-line reason and its exit code
@pytest.mark.parametrize("how", MISBEHAVIOURS)
@pytest.mark.parametrize("command", [["studies"], ["submit"]], ids=["studies", "submit"])
def test_a_misbehaving_server_is_one_line_and_exit_1(tmp_path, capsys, spec_file, how, command):
    """A proxy's HTML page, JSON of another shape, a 500 (with terminal escapes in its
    message), a body too big to read, bytes that are not HTTP, a server that never
    answers: one line saying so, exit 1."""
    server = Misbehaving(how)
    try:
        err = one_line(in_process(capsys, *args_for(command, spec_file, server.url)), 1)
    finally:
        server.close()
    assert server.url in err or "500" in err, err


@pytest.mark.parametrize("how", ["html 200", "garbage JSON", "JSON list"])
@pytest.mark.parametrize("command", [*COMMANDS, ["run"]], ids=lambda c: c[0])
def test_every_command_survives_a_server_that_is_not_samsweep(
    tmp_path, capsys, spec_file, how, command
):
    server = Misbehaving(how)
    args = args_for(command, spec_file, server.url)
    if command == ["run"]:
        args += ["--state-dir", str(tmp_path / "state")]
    try:
        one_line(in_process(capsys, *args), 1)
    finally:
        server.close()
    assert not (tmp_path / "state").exists()  # `run --server` never starts its own
