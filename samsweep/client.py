"""What `samsweep run` does over HTTP: submit, follow with a progress bar, print results."""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import ValidationError

from samsweep.spec import StudySpec


class SpecError(ValueError):
    """A spec file that cannot be read, parsed or validated; the message names the file
    (and the line and column where they are known) and is meant for the terminal as is."""


def load_spec(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON spec and check it locally, so typos fail before any server starts."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory, not a spec file") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read it: {e.strerror or e}") from None
    data = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_yaml(path, text)
    if data is None:
        raise SpecError(f"{path}: the spec is empty")
    try:
        StudySpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_validation_message(path, text, e)) from None
    except ValueError as e:  # a validator's own error that pydantic did not wrap
        raise SpecError(f"{path}: invalid spec: {e}") from None
    return data


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error, not "last wins":
    a repeated key would silently change the study (the API refuses them too); and
    YAML 1.2's floats, so `lr: 1e-3` is a number (PyYAML's YAML 1.1 reads it as a
    string, which the strict spec then refuses)."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it below, with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's float syntax (1e-3, 5E-4, .5, 1.0e+3); the rest of YAML 1.1 stays.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise SpecError(f"{path}: could not parse JSON: duplicate key {e.args[0]!r}") from None
    except json.JSONDecodeError as e:
        raise SpecError(
            _located(path, text, e.lineno, e.colno, f"could not parse JSON: {e.msg}")
        ) from None


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as e:
        problem = e.problem or "syntax error"
        if e.context:
            m = e.context_mark
            where = f" started at {m.line + 1}:{m.column + 1}" if m else ""
            problem += f" ({e.context}{where})"
        mark = e.problem_mark or e.context_mark
        if mark is None:
            raise SpecError(f"{path}: could not parse YAML: {problem}") from None
        message = f"could not parse YAML: {problem}"
        raise SpecError(_located(path, text, mark.line + 1, mark.column + 1, message)) from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: could not parse YAML: {e}") from None


def _located(path: Path, text: str, line: int, column: int, message: str) -> str:
    """`path:line:col: message`, then the offending line (editors and terminals link the
    first form to the place)."""
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    shown = f"\n    {line} | {source[:200]}" if source.strip() else ""
    return f"{path}:{line}:{column}: {message}{shown}"


def _validation_message(path: Path, text: str, error: ValidationError) -> str:
    """Each error as `path:line:col: field.path: message (got value)`; the position is
    the YAML (or JSON, which YAML's parser reads too) node the error is about."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    errors = error.errors(include_url=False)
    out = [f"{path}: invalid spec ({len(errors)} error{'s' if len(errors) != 1 else ''}):"]
    for e in errors:
        loc = e["loc"]
        field = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in loc).lstrip(".")
        message = e["msg"]
        value = e.get("input")
        if e["type"] != "missing" and not isinstance(value, dict | list):
            shown = repr(value)
            message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
        mark = _mark(root, loc)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        out.append(f"  {where}{field or '(the whole spec)'}: {message}")
    return "\n".join(out)


def _mark(node: yaml.Node | None, loc: tuple) -> yaml.Mark | None:
    """The start of the node at `loc`, or of the nearest enclosing one that exists."""
    if node is None:
        return None
    for i, key in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            match = [
                (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key
            ]
            if not match:
                break
            k, node = match[0]
            if i == len(loc) - 1:  # the field itself: point at its name
                return k.start_mark
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if not 0 <= key < len(node.value):
                break
            node = node.value[key]
        else:
            break
    return node.start_mark


def is_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Refused(Exception):
    """The API answered a submission with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the API refused the study ({status}): {body}")
        self.status = status


def connect(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, timeout=30, headers=headers)


def submit(http: httpx.Client, spec: dict[str, Any]) -> str:
    """POST the study; returns its id."""
    r = http.post("/studies", json=spec)
    if r.status_code not in (200, 201):
        raise Refused(r.status_code, r.text)
    print(f"study {r.json()['id']}: {r.json()['n_trials']} trials", file=sys.stderr)
    return r.json()["id"]


def follow(http: httpx.Client, study_id: str, poll: float = 1.0) -> None:
    """Show progress until the study is complete or cancelled."""
    started, last = time.monotonic(), None
    while True:
        detail = http.get(f"/studies/{study_id}").raise_for_status().json()
        last = _progress(detail, time.monotonic() - started, last)
        if detail["status"] in ("complete", "cancelled"):
            break
        time.sleep(poll)
    print(file=sys.stderr)


def results(http: httpx.Client, study_id: str, seconds: float) -> int:
    """Print the trials, the per-cell summary and the best; 1 when nothing completed."""
    trials = all_trials(http, study_id, curves=False)  # the tables need no curves
    best = http.get(f"/studies/{study_id}/best").raise_for_status().json()
    print(format_results(trials, best, seconds))
    return 0 if best["best"] is not None else 1


class ServerExited(RuntimeError):
    """The server process being waited for ended before it answered."""


def wait_until_up(url: str, timeout: float, process=None, poll: float = 0.3) -> None:
    """Poll GET /health until it answers 200 (the one "wait until healthy" loop: the CLI,
    the tests and the benchmarks use it). Raises ServerExited if `process` (a Popen)
    ends first, TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not is_up(url):
        if process is not None and process.poll() is not None:
            raise ServerExited(f"{process.args} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not healthy after {timeout:.0f}s")
        time.sleep(poll)


def cancel(http: httpx.Client, study_id: str) -> dict[str, Any]:
    """POST /studies/{id}/cancel; returns the study's detail."""
    return http.post(f"/studies/{study_id}/cancel", timeout=10).raise_for_status().json()


def wait_stopped(http: httpx.Client, study_id: str, timeout: float, poll: float = 0.5) -> bool:
    """Wait (at most `timeout` s) until no trial of the study is QUEUED or RUNNING."""
    deadline = time.monotonic() + timeout
    while True:
        detail = http.get(f"/studies/{study_id}", timeout=10).raise_for_status().json()
        if detail["counts"]["RUNNING"] == 0 and detail["counts"]["QUEUED"] == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)


def cancel_command(url: str, study_id: str, token: bool) -> str:
    """The shell line that cancels a study (the token is referred to, never printed)."""
    auth = ' -H "Authorization: Bearer $SAMSWEEP_API_TOKEN"' if token else ""
    return f"curl -X POST{auth} {url}/studies/{study_id}/cancel"


def _progress(detail: dict[str, Any], elapsed: float, last: tuple | None) -> tuple:
    """Redraw the bar in place on a terminal; elsewhere (logs, CI) print a line per change."""
    p, c = detail["progress"], detail["counts"]
    state = (p["finished"], c["RUNNING"], c["FAILED"])
    tty = sys.stderr.isatty()
    if tty or state != last:
        width = 30
        done = int(width * p["fraction"])
        line = (
            f"[{'#' * done}{'.' * (width - done)}] {p['finished']}/{p['total']} trials"
            f"  running {c['RUNNING']}  failed {c['FAILED']}  {elapsed:5.0f}s"
        )
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    return state


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:6.2f}"


def all_trials(http: httpx.Client, study_id: str, curves: bool = True) -> list[dict[str, Any]]:
    """Every trial of a study, page by page (GET /studies/{id}/trials is paginated)."""
    trials: list[dict[str, Any]] = []
    while True:
        page = (
            http.get(
                f"/studies/{study_id}/trials",
                params={"limit": 1000, "offset": len(trials), "curves": curves},
            )
            .raise_for_status()
            .json()
        )
        trials += page["trials"]
        if not page["trials"] or len(trials) >= page["total"]:
            return trials


def format_results(trials: list[dict[str, Any]], best: dict[str, Any], seconds: float) -> str:
    """One row per trial, then mean ± std per grid cell over seeds, then the best."""
    head = f"{'optimizer':>9} {'batch':>5} {'method':>12}"
    out = [
        "trials (accuracies in %):",
        f"{head} {'seed':>4} {'state':>10} {'train':>6} {'test':>6} {'gap':>6} {'secs':>6}",
    ]
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for t in sorted(trials, key=lambda t: _cell(t) + (t["params"]["seed"],)):
        m = t["metrics"] or {}
        out.append(
            f"{_label(t)} {t['params']['seed']:>4} {t['state']:>10} "
            f"{_pct(m.get('train_accuracy'))} {_pct(m.get('test_accuracy'))} "
            f"{_pct(m.get('gap'))} {m.get('wall_seconds', 0):6.1f}"
            + (f"  {t['error']}" if t["error"] else "")
        )
        if t["state"] == "COMPLETE":
            cells.setdefault(_cell(t), []).append(t)
    out += [
        "",
        "per cell, mean ± std over seeds (accuracies in %; sharpness: loss increase in the"
        " sharpness rho-ball, and the top Hessian eigenvalue):",
        f"{head} {'n':>2} {'train':>13} {'test':>13} {'gap':>13} {'secs':>6}"
        f" {'sharpness':>9} {'hess_max':>9}",
    ]
    for _, ts in sorted(cells.items()):
        ms = [t["metrics"] for t in ts]
        accuracies = " ".join(
            _mean_std([m[k] for m in ms]) for k in ("train_accuracy", "test_accuracy", "gap")
        )
        out.append(
            f"{_label(ts[0])} {len(ms):>2} {accuracies} "
            f"{statistics.fmean(m['wall_seconds'] for m in ms):6.1f}"
            f" {_mean(ms, 'sharpness')} {_mean(ms, 'hessian_max_eig')}"
        )
    b = best["best"]
    out.append("")
    if b is None:
        out.append(f"no complete trial; counts: {best['counts']}")
    else:
        p, m = b["params"], b["metrics"]
        out.append(
            f"best by {best['objective']}: {p['base_optimizer']} batch {p['batch_size']} "
            f"{_method(p)} seed {p['seed']}: test {100 * m['test_accuracy']:.2f}%  "
            f"train {100 * m['train_accuracy']:.2f}%  gap {100 * m['gap']:.2f}"
        )
    out.append(f"{len(trials)} trials, {best['counts']['COMPLETE']} complete, in {seconds:.0f}s")
    return "\n".join(out)


def _method(p: dict[str, Any]) -> str:
    """'rho 0' for the base optimizer alone, else e.g. 'sam 0.05', 'asam 1 m=32'."""
    if p["rho"] == 0:
        return "rho 0"
    m = p.get("m")
    return f"{p.get('sam_variant') or 'sam'} {p['rho']:g}" + (f" m={m}" if m else "")


def _label(t: dict[str, Any]) -> str:
    p = t["params"]
    return f"{p['base_optimizer']:>9} {p['batch_size']:>5} {_method(p):>12}"


def _cell(t: dict[str, Any]) -> tuple:
    p = t["params"]
    variant = p.get("sam_variant") or ""
    return (p["base_optimizer"], p["batch_size"], variant, p.get("m") or 0, p["rho"])


def _mean(ms: list[dict[str, Any]], key: str) -> str:
    values = [m[key] for m in ms if m.get(key) is not None]
    return f"{statistics.fmean(values):9.4g}" if values else f"{'-':>9}"


def _mean_std(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):6.2f}±{100 * sd:5.2f}"
