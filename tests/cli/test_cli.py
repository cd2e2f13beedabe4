"""`samsweep up` as a user runs it: the embedded default starts, serves, and on
SIGTERM stops everything it started (no orphaned worker keeps training). And the
CLI's answers to bad input: a spec that cannot be read, parsed or validated is one
short message naming the file and the place, exit code 2, never a traceback; the
Optuna storage URL hides its password unless asked."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from samsweep.cli import main
from samsweep.client import SpecError, load_spec
from samsweep.core.settings import get_settings, redact, with_search_path
from tests.support.cli import (
    COMMANDS,
    MALFORMED,
    VALID_YAML,
    args_for,
    in_process,
    mkdir,
    one_line,
    write,
)
from tests.support.http import free_port
from tests.support.paths import ROOT
from tests.support.specs import digits_spec

# --- spec files ------------------------------------------------------------------------

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


# docs/cli.md "The CLI": a spec that cannot be parsed: `file:line:col: ...`, exit 2
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


# docs/cli.md "The CLI": a spec that cannot be validated: one line per error, exit 2
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


# docs/cli.md "The CLI": a spec that cannot be read is refused before anything starts
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file"),
        (mkdir, "is a directory, not a spec file"),
        (write(""), "the spec is empty"),
        (write(b"name: \xff\n"), "not UTF-8 text"),
        (write("- 1\n"), "Input should be a valid dictionary"),
    ],
)
def test_an_unreadable_spec_is_one_line(tmp_path, capsys, make, message):
    path = make(tmp_path / "spec.yaml")
    assert main(["run", str(path), "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"samsweep: {path}") and message in err, err
    assert len(err.strip().splitlines()) <= 2, err


# docs/cli.md "The CLI": `--no-follow` needs an API that is already up
def test_no_follow_never_starts_a_server_it_would_stop_at_once(tmp_path, monkeypatch, capsys):
    """It would submit, stop the server, and leave the study for the next `samsweep up`."""
    monkeypatch.setenv("SAMSWEEP_API_URL", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    path = tmp_path / "spec.yaml"
    path.write_text(VALID_YAML)
    assert main(["run", str(path), "--no-follow", "--state-dir", str(tmp_path / "st")]) == 1
    assert "start `samsweep up` first" in capsys.readouterr().err
    assert not (tmp_path / "st" / "up.log").exists()


# README.md "A first study and its report": `make demo` submits examples/digits-label-noise.yaml
def test_the_example_spec_loads():
    from samsweep.client import load_spec

    assert load_spec(ROOT / "examples" / "digits-label-noise.yaml")["name"]


# --- optuna-url -------------------------------------------------------------------------


# docs/cli.md "The CLI": `optuna-url` on SQLite: the absolute path of optuna.sqlite
def test_optuna_url_sqlite_is_an_absolute_path(tmp_path, capsys):
    assert main(["optuna-url", "--state-dir", str(tmp_path / "st")]) == 0
    out, err = capsys.readouterr()
    assert out == f"sqlite:///{(tmp_path / 'st').resolve()}/optuna.sqlite\n"
    assert "does not exist yet" in err


# docs/cli.md "The CLI": `optuna-url` prints the password as *** unless --show-password
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


# docs/cli.md "The CLI": Ctrl-C: exit 130, no traceback
def test_ctrl_c_in_a_command_is_exit_130_without_traceback(monkeypatch):
    import samsweep.cli.commands as cli

    def interrupted(args_for):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_migrate", interrupted)
    assert main(["migrate"]) == 130


# docs/cli.md "The CLI": on Linux the kernel sends the worker SIGTERM when `up` dies
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


# docs/spec.md "The study spec": `samsweep run` reads YAML 1.2 floats (`lr: 1e-3` is a number,
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


# docs/cli.md "Exit codes": no traceback for bad input; a one-line reason and its exit code --------
# Each case runs in-process through `main` (what the entry point calls; an escaping
# exception fails the test) and a representative few through the real entry point,
# `python -m samsweep.cli`, as a subprocess.


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
    err = one_line(in_process(capsys, *args), 2)
    assert says in err and str(path) in err, err
    assert not (tmp_path / "state").exists()


def test_an_unreadable_spec_file_is_one_line_and_exit_2(capsys):
    """Root reads any file mode; /proc/1/mem is refused even to root (EACCES or EIO)."""
    target = "/proc/1/mem"
    err = one_line(in_process(capsys, "submit", target, "--server", "http://127.0.0.1:9"), 2)
    assert err.startswith(f"samsweep: {target}: "), err


@pytest.mark.parametrize(
    "server", ["http://127.0.0.1:{port}", "http://[::1", "ftp://127.0.0.1/", "not a url", ""]
)
@pytest.mark.parametrize("command", [*COMMANDS, ["submit"]], ids=lambda c: c[0])
def test_an_unreachable_or_malformed_server_url_is_one_line_and_exit_1(
    capsys, spec_file, server, command
):
    url = server.format(port=free_port())
    one_line(in_process(capsys, *args_for(command, spec_file, url)), 1)


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
    code, err = in_process(capsys, "submit", str(path))
    assert code == 70 and "internal error: RuntimeError: boom" in err, err
    assert len(err.strip().splitlines()) == 1


# docs/deploy.md "Datasets": the official archives are checked against the MD5 sums their page
# publishes; any other digest is refused
def test_the_official_archive_is_checked_against_its_published_md5(tmp_path):
    import hashlib

    from samsweep.cli.data import ARCHIVES, Refused, _verify

    official = ARCHIVES["cifar10"]
    assert official.algorithm == "md5" and official.url.startswith("https://www.cs.toronto.edu/")
    part = tmp_path / "a.part"
    part.write_bytes(b"some bytes")
    from dataclasses import replace

    _verify(part, replace(official, digest=hashlib.md5(b"some bytes").hexdigest()))
    with pytest.raises(Refused, match="not the published c58f3010"):
        _verify(part, official)


# docs/cli.md "Existing studies, from the terminal": a gain without an interval says why (one
# pair, or every pair moved by the same step, as accuracies in steps of 1/N often do)
def test_a_gain_without_an_interval_says_why():
    from samsweep.cli.tables import gain_line
    from samsweep.core.report import Gain, Group

    def line(n: int) -> str:
        gain = Gain(mean=0.01, std=None if n == 1 else 0.0, n_pairs=n, seeds=list(range(n)),
                    ci_low=None, ci_high=None, excludes_zero=None)  # fmt: skip
        group = Group(base_optimizer="sgd", batch_size=32, sam_variant="sam", m=None,
                      rows=[], selected_rho=0.05, gain=gain)  # fmt: skip
        return gain_line(group)

    assert line(1).endswith("+1.00 pp (one pair: no interval)")
    assert line(2).endswith("+1.00 pp (every pair differs alike: no interval)")


# docs/cli.md: the best cell names its learning rate and weight decay where the grid varies
# them (the CIFAR grid's best line read "rho 0" and left out its lr)
def test_the_best_cell_names_its_train_setting():
    from samsweep.cli.tables import best_lines
    from samsweep.core.wire import Best

    stat = {"mean": 0.5, "std": 0.01, "n": 2}
    best = Best.model_validate({
        "study_id": "s", "objective": "val_accuracy", "selected_on_test": False,
        "status": "complete", "counts": {"COMPLETE": 2}, "complete": True, "best": None,
        "cell": {"base_optimizer": "sgd", "batch_size": 32, "rho": 0.0, "sam_variant": None,
                 "m": None, "lr": 0.02, "n": 2, "seeds": [0, 1], "objective": stat,
                 "metrics": {k: stat for k in ("test_accuracy", "train_accuracy", "gap")}},
    })  # fmt: skip
    (line,) = best_lines(best)
    assert "sgd batch 32 rho 0, lr 0.02:" in line, line
