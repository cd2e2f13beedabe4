"""`samsweep up` as a user runs it: the embedded default starts, serves, and on
SIGTERM stops everything it started (no orphaned worker keeps training). And the
CLI's answers to bad input: a spec that cannot be read, parsed or validated is one
short message naming the file and the place, exit code 2, never a traceback; the
Optuna storage URL hides its password unless asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from samsweep.cli import main
from samsweep.client import SpecError, load_spec
from samsweep.core.settings import get_settings, redact, with_search_path
from tests.conftest import ROOT, digits_spec, free_port, wait_for, wait_healthy


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# README "The CLI": `samsweep up`: the worker never outlives it (SIGTERM)
@pytest.mark.e2e
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


# --- spec files ------------------------------------------------------------------------

VALID_YAML = """\
name: t
dataset: {name: digits}
model: {name: cnn}
search:
  rho: [0.0, 0.05]
  batch_size: [16]
  base_optimizer: [sgd]
train: {epochs: 1, lr: 0.05}
"""

# (file name, text, the expected `file:line:col` and a phrase of the message)
SYNTAX_ERRORS = [
    (
        "flow.yaml",
        VALID_YAML.replace("[0.0, 0.05]", "[0.0, 0.05"),
        ":6:13:",
        "could not parse YAML",
    ),
    ("colon.yml", "name: t\nmodel: name: cnn\n", ":2:12:", "could not parse YAML: mapping values"),
    ("tab.yaml", "name: t\nsearch:\n\trho: [0]\n", ":3:1:", "could not parse YAML"),
    ("comma.json", '{"name": "t",\n  "seeds": [0,],\n}\n', ":2:15:", "could not parse JSON"),
    ("trunc.json", '{"name": "t",\n  "model": {"name": "cnn"}', ":2:27:", "could not parse JSON"),
    # a key given twice would silently keep the last value: refused, like the API does
    (
        "dup.yaml",
        VALID_YAML.replace("train:", "search: {rho: [0.5]}\ntrain:"),
        ":8:1:",
        "could not parse YAML: found duplicate key 'search'",
    ),
    ("dup.json", '{"name": "t", "name": "u"}', ":", "could not parse JSON: duplicate key 'name'"),
]


# README "The CLI": a spec that cannot be parsed: `file:line:col: ...`, exit 2
@pytest.mark.parametrize(("name", "text", "where", "phrase"), SYNTAX_ERRORS)
def test_a_syntax_error_names_the_file_line_and_column(tmp_path, capsys, name, text, where, phrase):
    path = tmp_path / name
    path.write_text(text)
    assert main(["run", str(path), "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith(f"samsweep: {path}{where} {phrase}"), err
    assert len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "state" / "up.log").exists()  # refused before any server starts


def _invalid(suffix: str) -> str:
    if suffix == ".json":
        spec = digits_spec()
        spec["search"]["rho"] = [True, 0.05]
        spec["train"]["epochs"] = "2"
        spec["tyop"] = 1
        return json.dumps(spec, indent=2)
    return (
        VALID_YAML.replace("[0.0, 0.05]", "[yes, 0.05]").replace("epochs: 1", "epochs: '2'")
        + "tyop: 1\n"
    )


# README "The CLI": a spec that cannot be validated: one line per error, exit 2
@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_an_invalid_spec_lists_each_error_by_field(tmp_path, capsys, suffix):
    path = tmp_path / f"spec{suffix}"
    path.write_text(_invalid(suffix))
    assert main(["run", str(path), "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == f"samsweep: {path}: invalid spec (3 errors):", err
    by_field = {line.split(": ", 2)[-2].strip(): line for line in lines[1:]}
    assert set(by_field) == {"search.rho[0]", "train.epochs", "tyop"}, err
    assert "(got True)" in by_field["search.rho[0]"]
    assert "Extra inputs are not permitted" in by_field["tyop"]
    # The place of each error in the file (YAML's parser reads JSON too).
    text = path.read_text().splitlines()
    expected = {"search.rho[0]": ("true", "yes"), "train.epochs": ("epochs",), "tyop": ("tyop",)}
    for field, line in by_field.items():
        assert line.strip().startswith(f"{path}:"), line
        lineno = int(line.strip()[len(str(path)) + 1 :].split(":", 1)[0])
        assert any(word in text[lineno - 1] for word in expected[field]), (line, text[lineno - 1])


def _write(text: str | bytes):
    def make(path):
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    return make


def _mkdir(path):
    path.mkdir()
    return path


# README "The CLI": a spec that cannot be read is refused before anything starts
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file"),
        (_mkdir, "is a directory, not a spec file"),
        (_write(""), "the spec is empty"),
        (_write(b"name: \xff\n"), "not UTF-8 text"),
        (_write("- 1\n"), "Input should be a valid dictionary"),
    ],
)
def test_an_unreadable_spec_is_one_line(tmp_path, capsys, make, message):
    path = make(tmp_path / "spec.yaml")
    assert main(["run", str(path), "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"samsweep: {path}") and message in err, err
    assert len(err.strip().splitlines()) <= 2, err


@pytest.mark.e2e
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


# README "The CLI": `--no-follow` needs an API that is already up
def test_no_follow_never_starts_a_server_it_would_stop_at_once(tmp_path, monkeypatch, capsys):
    """It would submit, stop the server, and leave the study for the next `samsweep up`."""
    monkeypatch.setenv("SAMSWEEP_API_URL", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    path = tmp_path / "spec.yaml"
    path.write_text(VALID_YAML)
    assert main(["run", str(path), "--no-follow", "--state-dir", str(tmp_path / "st")]) == 1
    assert "start `samsweep up` first" in capsys.readouterr().err
    assert not (tmp_path / "st" / "up.log").exists()


# README "Two commands": `make demo` submits examples/digits-label-noise.yaml
def test_the_example_spec_loads():
    from samsweep.client import load_spec

    assert load_spec(ROOT / "examples" / "digits-label-noise.yaml")["name"]


# --- optuna-url -------------------------------------------------------------------------


# README "The CLI": `optuna-url` on SQLite: the absolute path of optuna.sqlite
def test_optuna_url_sqlite_is_an_absolute_path(tmp_path, capsys):
    assert main(["optuna-url", "--state-dir", str(tmp_path / "st")]) == 0
    out, err = capsys.readouterr()
    assert out == f"sqlite:///{(tmp_path / 'st').resolve()}/optuna.sqlite\n"
    assert "does not exist yet" in err


# README "The CLI": `optuna-url` prints the password as *** unless --show-password
def test_optuna_url_postgres_hides_the_password_unless_asked(monkeypatch, capsys):
    monkeypatch.setenv("SAMSWEEP_DATABASE_URL", "postgresql+psycopg://bob:s%40cr3t@db:5432/sam")
    get_settings.cache_clear()
    assert main(["optuna-url"]) == 0
    out, err = capsys.readouterr()
    assert out == "postgresql+psycopg://bob:***@db:5432/sam?options=-csearch_path%3Doptuna\n"
    assert "--show-password" in err and "s%40cr3t" not in out + err
    assert main(["optuna-url", "--show-password"]) == 0
    out, _ = capsys.readouterr()
    assert out == "postgresql+psycopg://bob:s%40cr3t@db:5432/sam?options=-csearch_path%3Doptuna\n"


def test_optuna_url_respects_an_explicit_optuna_url(monkeypatch, capsys):
    monkeypatch.setenv("SAMSWEEP_OPTUNA_URL", "postgresql://u:pw@h/optuna_db")
    get_settings.cache_clear()
    assert main(["optuna-url"]) == 0
    assert capsys.readouterr().out == "postgresql://u:***@h/optuna_db\n"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p@h/d", "postgresql://u:***@h/d"),
        ("postgresql://u:p:q@h:1/d?x=1", "postgresql://u:***@h:1/d?x=1"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresql://h/d", "postgresql://h/d"),
        ("sqlite:////tmp/a:b@c.sqlite", "sqlite:////tmp/a:b@c.sqlite"),
    ],
)
def test_redact(url, shown):
    assert redact(url) == shown


# README "The CLI": Ctrl-C: exit 130, no traceback
def test_ctrl_c_in_a_command_is_exit_130_without_traceback(monkeypatch):
    import samsweep.cli.commands as cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_migrate", interrupted)
    assert main(["migrate"]) == 130


# README "The CLI": on Linux the kernel sends the worker SIGTERM when `up` dies
def test_parent_death_signal_is_set_in_the_child(tmp_path):
    """The preexec_fn really sets PR_SET_PDEATHSIG (read back with PR_GET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    from samsweep.cli.processes import terminate_with_parent

    code = (
        "import ctypes; libc = ctypes.CDLL(None); s = ctypes.c_int();"
        " libc.prctl(2, ctypes.byref(s)); print(s.value)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=terminate_with_parent(),
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert int(out) == signal.SIGTERM


# README "The study spec": `samsweep run` reads YAML 1.2 floats (`lr: 1e-3` is a number,
# `rho: [yes]` is 422)
def test_yaml_exponents_are_numbers_and_yes_is_not(tmp_path):
    """PyYAML reads YAML 1.1, where `1e-3` is a string; the strict spec would refuse the
    most common way to write a learning rate. Booleans stay booleans (and are refused)."""
    path = tmp_path / "exp.yaml"
    path.write_text(VALID_YAML.replace("lr: 0.05", "lr: 1e-3, weight_decay: 5E-4"))
    spec = load_spec(path)
    assert spec["train"]["lr"] == 0.001 and spec["train"]["weight_decay"] == 0.0005
    path.write_text(VALID_YAML.replace("[0.0, 0.05]", "[yes]"))
    with pytest.raises(SpecError, match=r"search\.rho\[0\]: Input should be a valid number"):
        load_spec(path)


def test_search_path_replaces_options_and_keeps_the_rest():
    url = "postgresql+psycopg://u:p%40x@h/d?options=-cstatement_timeout%3D5&sslmode=require"
    assert with_search_path(url, "optuna") == (
        "postgresql+psycopg://u:p%40x@h/d?options=-csearch_path%3Doptuna&sslmode=require"
    )


def test_optuna_sqlite_file_sits_beside_the_database_even_with_odd_characters(monkeypatch):
    monkeypatch.setenv("SAMSWEEP_DATABASE_URL", "sqlite:////tmp/a:b@c/samsweep.sqlite")
    get_settings.cache_clear()
    assert get_settings().resolved_optuna_url == "sqlite:////tmp/a:b@c/optuna.sqlite"
    monkeypatch.setenv("SAMSWEEP_DATABASE_URL", "mysql://u:secret@h/d")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match=r"unsupported .*u:\*\*\*@h/d"):
        _ = get_settings().resolved_optuna_url


# README "The CLI": no traceback for bad input; a one-line reason and its exit code --------
# Each case runs in-process through `main` (what the entry point calls; an escaping
# exception fails the test) and a representative few through the real entry point,
# `python -m samsweep.cli`, as a subprocess.

STUDY_ID = "0" * 32


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


def _in_process(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def _one_line(answer: tuple[int, str], code: int) -> str:
    returned, err = answer
    assert returned == code, (returned, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("samsweep: "), err[-2000:]
    assert len(lines) <= 2, err[-2000:]  # the reason, and at most the offending line
    assert "\x1b" not in err and "\x07" not in err  # no control code from a server
    return err


def _deep_json(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def _alias_bomb() -> str:
    lines, previous = ['a: &a ["x","x","x","x","x","x","x","x","x"]'], "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
        previous = name
    return "\n".join([*lines, "name: *i"]) + "\n"


def _fifo(path):
    os.mkfifo(path)
    return path


MALFORMED = [
    ("deep JSON", "spec.json", _write(_deep_json(5000)), "spec.json:1:"),
    ("deep YAML flow", "spec.yaml", _write("[" * 5000 + "]" * 5000), "spec.yaml:1:"),
    ("deep YAML block", "spec.yaml", _write("".join(" " * i + "k:\n" for i in range(800))), ":33:"),
    ("deep JSON in YAML", "spec.yaml", _write(_deep_json(5000)), "spec.yaml:1:"),
    ("alias bomb", "spec.yaml", _write(_alias_bomb()), "aliases are expanded"),
    ("binary", "spec.yaml", _write(bytes(range(256)) * 4), "not UTF-8"),
    ("huge", "spec.yaml", _write("# " + "x" * 2_000_000 + "\n"), "larger than"),
    ("not UTF-8", "spec.json", _write(b'{"name": "\xe9"}'), "not UTF-8"),
    ("top-level list", "spec.json", _write("[1, 2]"), "valid dictionary"),
    ("top-level string", "spec.yaml", _write("just text\n"), "valid dictionary"),
    ("a directory", "spec.yaml", _mkdir, "is a directory"),
    ("a FIFO", "spec.yaml", _fifo, "not a regular file"),
    ("missing", "spec.yaml", lambda p: p, "no such file"),
]
THROUGH_THE_ENTRY_POINT = {"deep JSON", "deep YAML flow", "alias bomb", "a FIFO"}


@pytest.mark.parametrize("command", ["submit", "run"])
@pytest.mark.parametrize("case,name,make,says", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_spec_file_is_one_line_and_exit_2(
    tmp_path, capsys, command, case, name, make, says
):
    """A 5 000-level nesting killed `submit` and `run` with a RecursionError traceback
    (exit 1); a FIFO hung them. Nothing is started or sent: no server exists."""
    path = make(tmp_path / name)
    dead = f"http://127.0.0.1:{free_port()}"
    args = [command, str(path), "--server", dead]
    if command == "run":
        args += ["--state-dir", str(tmp_path / "state")]
    err = _one_line(_in_process(capsys, *args), 2)
    assert says in err and str(path) in err, err
    if case in THROUGH_THE_ENTRY_POINT:
        assert says in _one_line(_cli(*args, cwd=tmp_path, timeout=30), 2)
    assert not (tmp_path / "state").exists()


def test_an_unreadable_spec_file_is_one_line_and_exit_2(capsys):
    """Root reads any file mode; /proc/1/mem is refused even to root (EACCES or EIO)."""
    target = "/proc/1/mem"
    err = _one_line(_in_process(capsys, "submit", target, "--server", "http://127.0.0.1:9"), 2)
    assert err.startswith(f"samsweep: {target}: "), err


class _Misbehaving:
    """A local HTTP server that answers every request the same wrong way."""

    def __init__(self, how: str) -> None:
        import http.server
        import threading

        self.how = how
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                outer.answer(self)

            do_GET = do_POST = _answer

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *args) -> None:  # a client that hung up: expected, quiet
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def send(h, status: int, body: bytes, kind: str, **headers: str) -> None:
        h.send_response(status)
        h.send_header("content-type", kind)
        h.send_header("content-length", headers.pop("length", str(len(body))))
        for k, v in headers.items():
            h.send_header(k.replace("_", "-"), v)
        h.end_headers()
        h.wfile.write(body)

    def answer(self, h) -> None:
        html = b"<html><body><h1>502 Bad Gateway</h1>\n<p>nginx</p></body></html>\n"
        if self.how == "html 200":
            self.send(h, 200, html, "text/html")
        elif self.how == "html 500":
            self.send(h, 500, html, "text/html")
        elif self.how == "garbage JSON":
            body = b'{"items": 5, "total": "many", "id": [], "trials": {}}'
            self.send(h, 200, body, "application/json")
        elif self.how == "JSON list":
            self.send(h, 200, b"[1, 2, 3]", "application/json")
        elif self.how == "truncated JSON":
            self.send(h, 200, b'{"items": [', "application/json")
        elif self.how == "500 with escapes":
            error = {"code": "x\x1b[31m", "message": "a\nb\x1b]0;pwned\x07"}
            self.send(h, 500, json.dumps({"error": error}).encode(), "application/json")
        elif self.how == "huge declared":
            self.send(h, 200, b"{", "application/json", length=str(10 * 2**30))
        elif self.how == "huge streamed":
            h.send_response(200)
            h.send_header("content-type", "application/json")
            h.send_header("transfer-encoding", "chunked")
            h.end_headers()
            chunk = b"[" * 2**20
            try:
                for _ in range(400):  # 400 MiB, more than the client reads
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the client hung up: what it should do
        elif self.how == "bad gzip":
            body = b"not gzip at all"
            self.send(h, 200, body, "application/json", content_encoding="gzip")
        elif self.how == "not HTTP":
            h.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n")
            h.close_connection = True
        elif self.how == "silent":
            time.sleep(10)  # never answers within the client's timeout

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


MISBEHAVIOURS = [
    "html 200",
    "html 500",
    "garbage JSON",
    "JSON list",
    "truncated JSON",
    "500 with escapes",
    "huge declared",
    "huge streamed",
    "bad gzip",
    "not HTTP",
    "silent",
]
COMMANDS = [["studies"], ["status"], ["report"], ["best"], ["trials"], ["export"], ["cancel"]]


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(VALID_YAML)
    return path


def _args(command: list[str], spec_file, url: str) -> list[str]:
    if command[0] in ("submit", "run"):
        extra = [str(spec_file)]
    elif command[0] == "studies":
        extra = []
    else:
        extra = [STUDY_ID]
    return [*command, *extra, "--server", url, "--timeout", "0.5"]


@pytest.mark.parametrize("how", MISBEHAVIOURS)
@pytest.mark.parametrize("command", [["studies"], ["submit"]], ids=["studies", "submit"])
def test_a_misbehaving_server_is_one_line_and_exit_1(tmp_path, capsys, spec_file, how, command):
    """A proxy's HTML page, JSON of another shape, a 500 (with terminal escapes in its
    message), a body too big to read, bytes that are not HTTP, a server that never
    answers: one line saying so, exit 1."""
    server = _Misbehaving(how)
    try:
        err = _one_line(_in_process(capsys, *_args(command, spec_file, server.url)), 1)
    finally:
        server.close()
    assert server.url in err or "500" in err, err


@pytest.mark.e2e
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
    server = _Misbehaving(how)
    try:
        _one_line(_cli(*_args(command, spec_file, server.url), cwd=tmp_path), 1)
    finally:
        server.close()
    assert not (tmp_path / ".samsweep").exists()  # `run --server` never starts its own


@pytest.mark.parametrize("how", ["html 200", "garbage JSON", "JSON list"])
@pytest.mark.parametrize("command", [*COMMANDS, ["run"]], ids=lambda c: c[0])
def test_every_command_survives_a_server_that_is_not_samsweep(
    tmp_path, capsys, spec_file, how, command
):
    server = _Misbehaving(how)
    args = _args(command, spec_file, server.url)
    if command == ["run"]:
        args += ["--state-dir", str(tmp_path / "state")]
    try:
        _one_line(_in_process(capsys, *args), 1)
    finally:
        server.close()
    assert not (tmp_path / "state").exists()  # `run --server` never starts its own


@pytest.mark.parametrize(
    "server", ["http://127.0.0.1:{port}", "http://[::1", "ftp://127.0.0.1/", "not a url", ""]
)
@pytest.mark.parametrize("command", [*COMMANDS, ["submit"]], ids=lambda c: c[0])
def test_an_unreachable_or_malformed_server_url_is_one_line_and_exit_1(
    capsys, spec_file, server, command
):
    url = server.format(port=free_port())
    _one_line(_in_process(capsys, *_args(command, spec_file, url)), 1)


@pytest.mark.e2e
def test_an_unreachable_server_through_the_entry_point(tmp_path, spec_file):
    for url in (f"http://127.0.0.1:{free_port()}", "http://[::1"):
        _one_line(_cli(*_args(["studies"], spec_file, url), cwd=tmp_path), 1)


def test_a_bad_timeout_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["studies", "--timeout", "-1"])
    assert e.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_a_defect_is_one_line_and_exit_70(monkeypatch, capsys):
    """Not bad input: samsweep's own bug. Still no traceback unless asked for."""
    from samsweep.cli import studies

    def broken(*_):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(studies, "_submit", broken)
    monkeypatch.delenv("SAMSWEEP_TRACEBACK", raising=False)
    path = ROOT / "examples" / "digits-label-noise.yaml"
    code, err = _in_process(capsys, "submit", str(path))
    assert code == 70 and "internal error: RuntimeError: boom" in err, err
    assert len(err.strip().splitlines()) == 1
