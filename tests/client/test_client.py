"""The Python client, `samsweep.Client`, against a fake transport: what it retries
(reads, keyed submissions) and what it never does, its typed errors, and its report's
warnings. (Against a running API and worker: tests/e2e/client/test_client_live.py.)"""

from __future__ import annotations

import sys

import httpx
import pytest

from samsweep import Client
from samsweep.client import (
    NotFound,
    ServerError,
    Unauthorized,
    Unreachable,
)
from samsweep.core.report import Report
from tests.support.specs import digits_spec

S1 = "5" * 32  # a well-formed id (the offline tests' fake server knows it)

# --- against a fake transport: retries ----------------------------------------------------


def _client(handler, **kwargs) -> Client:
    transport = httpx.MockTransport(handler)
    return Client("http://api.test", "secret-token", transport=transport, **kwargs)


def _error(status: int, code: str, message: str, field: str | None = None, **headers):
    body = {"error": {"code": code, "message": message, "field": field, "details": []}}
    return httpx.Response(status, json=body, headers=headers)


def _sleepless(monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr("samsweep.client.api.time.sleep", pauses.append)
    return pauses


def test_reads_are_retried_on_503_honouring_retry_after(monkeypatch):
    pauses = _sleepless(monkeypatch)
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return _error(503, "database_unavailable", "try later", **{"Retry-After": "2"})
        return httpx.Response(
            200, text="a,b\n", headers={"content-type": "text/csv; charset=utf-8"}
        )

    assert _client(handler).report_csv(S1) == "a,b\n"
    assert len(seen) == 3 and pauses == [2.0, 2.0]
    assert seen[0].headers["Authorization"] == "Bearer secret-token"


def test_a_read_gives_up_after_its_retries_with_the_api_error(monkeypatch):
    _sleepless(monkeypatch)
    calls = []

    def handler(request):
        calls.append(request)
        return _error(503, "database_unavailable", "the database is down")

    with pytest.raises(ServerError) as e:
        _client(handler, retries=2).study(S1)
    assert len(calls) == 3 and e.value.code == "database_unavailable"


def test_client_errors_are_never_retried(monkeypatch):
    _sleepless(monkeypatch)
    calls = []

    def handler(request):
        calls.append(request)
        return _error(401, "unauthorized", "a valid bearer token is required")

    with pytest.raises(Unauthorized, match="401 unauthorized: a valid bearer token"):
        _client(handler).cancel(S1)
    assert len(calls) == 1


def test_a_submission_is_retried_with_one_idempotency_key(monkeypatch):
    """The client gives every submission a key, so its retry (the first answer lost)
    cannot create a second study; the API replays the first."""
    _sleepless(monkeypatch)
    keys = []

    def handler(request):
        keys.append(request.headers.get("Idempotency-Key"))
        if len(keys) == 1:
            raise httpx.ReadTimeout("lost", request=request)
        body = {"id": "s9", "name": "x", "n_trials": 4, "replayed": True, "links": {
            "self": "/studies/s9", "trials": "t", "best": "b", "report": "r"}}  # fmt: skip
        return httpx.Response(200, json=body)

    created = _client(handler).submit(digits_spec())
    assert created.id == "s9" and created.replayed
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]


def _detail(spec: dict, **extra) -> dict:
    """A StudyDetail as the API sends it."""
    when = "2026-12-07T00:00:00Z"
    return {
        "id": S1, "name": "x", "status": "queued", "n_trials": 4, "created_at": when,
        "links": {"self": "s", "trials": "t", "best": "b", "report": "r"},
        "optuna_study_name": "x", "counts": {},
        "progress": {"total": 4, "finished": 0, "fraction": 0.0},
        "timings": {"created_at": when, "started_at": None, "last_finished_at": None,
                    "elapsed_seconds": None},
        "spec": spec, **extra,
    }  # fmt: skip


# docs/cli.md "Python client": Client.extend adds values to what the study has, sends each
# list whole, and is retried under one Idempotency-Key
def test_extend_sends_whole_lists_and_retries_under_one_key(monkeypatch):
    import json

    _sleepless(monkeypatch)
    spec = digits_spec(rho=(0.0, 0.05), seeds=(0, 1))
    patches = []

    def handler(request):
        if request.method == "GET":
            return httpx.Response(200, json=_detail(spec))
        patches.append((json.loads(request.content), request.headers["Idempotency-Key"]))
        if len(patches) == 1:
            raise httpx.ReadTimeout("lost", request=request)
        return httpx.Response(200, json=_detail(spec, added=6, replayed=True))

    grown = _client(handler).extend(S1, seeds=[1, 2, 3], rho=[0.1], unbounded=True)
    assert grown.added == 6 and grown.replayed
    (body, key), (again, key2) = patches
    assert body == again and key == key2 and key.startswith("samsweep-client-")
    assert body == {"seeds": [0, 1, 2, 3], "search": {"rho": [0.0, 0.05, 0.1]},
                    "max_concurrent_trials": None}  # fmt: skip


def test_no_connection_is_unreachable_after_retries(monkeypatch):
    pauses = _sleepless(monkeypatch)

    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(Unreachable, match="cannot reach the samsweep API at http://api.test"):
        _client(handler, retries=3).studies()
    assert len(pauses) == 3


def test_a_non_json_error_page_still_raises_a_typed_error(monkeypatch):
    _sleepless(monkeypatch)

    def handler(request):
        return httpx.Response(404, text="<html>nginx</html>")

    with pytest.raises(NotFound) as e:
        _client(handler).best(S1)
    assert e.value.code == "http_404" and "nginx" in e.value.message


def test_to_dataframe_without_pandas_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    report = Report(
        objective="test_accuracy", selection_metric="test_accuracy", selected_on_test=True,
        counts={}, n_trials=0, groups=[], large_batch=[],
    )  # fmt: skip
    with pytest.raises(ImportError, match=r"needs pandas: pip install 'samsweep\[pandas\]'"):
        report.to_dataframe()


# docs/cli.md "Existing studies, from the terminal": the report says which metric selected rho, and
# warns when it was test
def test_the_report_warns_when_rho_was_selected_on_the_test_set():
    from samsweep.cli.tables import selection_lines

    report = Report(
        objective="test_accuracy", selection_metric="test_accuracy", selected_on_test=True,
        counts={}, n_trials=0, groups=[], large_batch=[],
    )  # fmt: skip
    first, warning = selection_lines(report)
    assert first == ("rho selected per group by the mean test_accuracy over seeds;"
                     " SAM against the baseline at equal epochs")  # fmt: skip
    assert warning.startswith("warning: rho was selected on the test set")
    report.selection_metric, report.selected_on_test = "val_accuracy", False
    report.comparison = "equal compute"  # docs/report.md "Compute": which comparison it shows
    assert selection_lines(report) == [
        "rho selected per group by the mean val_accuracy over seeds; SAM against the baseline"
        " at equal compute"
    ]


# docs/cli.md "Python client": the client parses the API's own models (samsweep.core.wire)
# and keeps the fields it does not know, so an API newer than the client still reads; an
# older API's submit answer without `replayed` is read from the status
def test_answers_from_a_newer_or_older_api_parse(monkeypatch):
    _sleepless(monkeypatch)
    links = {"self": "s", "trials": "t", "best": "b", "report": "r"}
    detail = {
        "id": S1, "name": "x", "status": "running", "n_trials": 2,
        "created_at": "2026-12-07T00:00:00Z", "links": links, "optuna_study_name": "o",
        "counts": {"QUEUED": 1, "RUNNING": 1},
        "progress": {"total": 2, "finished": 0, "fraction": 0.0, "eta_seconds": 60},
        "timings": {"created_at": "2026-12-07T00:00:00Z", "started_at": None,
                    "last_finished_at": None, "elapsed_seconds": None},
        "spec": {}, "window": {"sent": 1},
    }  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":  # an older API: no `replayed`, a replay is a 200
            return httpx.Response(200, json={"id": S1, "name": "x", "n_trials": 2, "links": links})
        return httpx.Response(200, json=detail)

    got = _client(handler).study(S1)
    assert got.model_extra == {"window": {"sent": 1}}
    assert got.progress.model_extra == {"eta_seconds": 60} and got.progress.total == 2
    assert _client(handler).submit(digits_spec()).replayed
