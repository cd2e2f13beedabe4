"""The Python client, `samsweep.Client`: against a running API and worker, its answers
are the API's JSON parsed into typed models (the report into the core's own
`samsweep.core.report.Report`), `to_dataframe()` gives the report's CSV columns, and an
error answer is a typed exception carrying the API's code. Against a fake transport:
what it retries (reads, keyed submissions) and what it never does."""

from __future__ import annotations

import sys

import httpx
import pytest

from samsweep import Client
from samsweep.client import (
    ApiError,
    InvalidRequest,
    NotAStudyId,
    NotFound,
    ServerError,
    Unauthorized,
    Unreachable,
)
from samsweep.core.report import CSV_COLUMNS, Report
from tests.conftest import digits_spec

S1 = "5" * 32  # a well-formed id (the offline tests' fake server knows it)
UNKNOWN = "0" * 32  # well-formed, and no study has it

# --- against a running API ---------------------------------------------------------------


# README "Python client": report() is samsweep.core.report.Report, equal to the API's JSON
@pytest.mark.e2e
def test_report_is_the_core_model_equal_to_the_json(finished_study):
    f = finished_study
    with Client(f.api) as client:
        report = client.report(f.study_id)
        csv_text = client.report_csv(f.study_id)
    raw = httpx.get(f"{f.api}/studies/{f.study_id}/report").json()
    assert type(report) is Report
    assert report == Report.model_validate(raw)
    assert report.model_dump(mode="json") == raw
    assert report.selection_metric == "val_accuracy" and not report.selected_on_test
    assert csv_text == httpx.get(f"{f.api}/studies/{f.study_id}/report?format=csv").text

    df = report.to_dataframe()
    assert list(df.columns) == list(CSV_COLUMNS)
    assert len(df) == sum(len(g.rows) for g in report.groups) == 4
    first = raw["groups"][0]["rows"][0]["metrics"]["test_accuracy"]
    assert df.loc[0, "test_accuracy_mean"] == pytest.approx(first["mean"])
    assert df["selected"].sum() == 2  # one selected rho per batch size


# README "Python client": studies(), study(), trials() (every page), best(), typed
@pytest.mark.e2e
def test_typed_answers(finished_study):
    f = finished_study
    with Client(f.api) as client:
        studies = client.studies()
        detail = client.study(f.study_id)
        trials = client.trials(f.study_id, curves=False)
        with_curves = client.trials(f.study_id, curves=True)
        best = client.best(f.study_id)
    assert f.study_id in [s.id for s in studies]
    assert detail.finished and detail.progress.finished == detail.n_trials == 8
    assert detail.counts["COMPLETE"] == 8 and detail.spec["objective"] == "val_accuracy"
    assert [t.number for t in trials] == list(range(8))
    assert all(t.curves is None for t in trials)
    assert all(len(t.curves) == 2 for t in with_curves)  # one per epoch
    assert best.objective == "val_accuracy" and not best.selected_on_test and best.complete
    assert best.cell is not None and best.cell.n == 2 and best.best is not None
    raw = httpx.get(f"{f.api}/studies/{f.study_id}/best").json()
    assert best.cell.objective.mean == raw["cell"]["objective"]["mean"]

    df = trials.to_dataframe()
    assert len(df) == 8
    assert {"number", "state", "seed", "rho", "batch_size", "test_accuracy", "gap"} <= set(
        df.columns
    )
    assert (df["state"] == "COMPLETE").all()


# README "Python client": an API error is a typed exception with the API's code
@pytest.mark.e2e
def test_api_errors_are_typed(finished_study, tmp_path):
    f = finished_study
    with Client(f.api) as client:
        with pytest.raises(NotFound) as missing:
            client.report(UNKNOWN)
        with pytest.raises(NotAStudyId):  # refused before a URL is built with it
            client.report("../../x")
        spec = digits_spec(rho=[0.001 * i for i in range(50)], seeds=range(30))  # over the limit
        with pytest.raises(InvalidRequest) as refused:
            client.submit(spec)
        with pytest.raises(InvalidRequest) as invalid:
            client.submit({**digits_spec(), "tyop": 1})
    raw = httpx.get(f"{f.api}/studies/{UNKNOWN}/report").json()["error"]
    e = missing.value
    assert isinstance(e, ApiError) and e.status == 404 and e.code == "not_found"
    assert e.message == raw["message"] and str(e) == f"404 not_found: {raw['message']}"
    assert e.path == f"/studies/{UNKNOWN}/report"
    assert refused.value.status == 422 and refused.value.code == "invalid_spec"
    assert invalid.value.code == "invalid_spec" and invalid.value.field == "tyop"
    assert invalid.value.details and invalid.value.details[0]["field"] == "tyop"


# README "Python client": the same Idempotency-Key submits one study
@pytest.mark.e2e
def test_submit_with_an_idempotency_key_and_cancel(finished_study):
    f = finished_study
    spec = digits_spec(batch_size=(16,), rho=(0.0, 0.1, 0.2), seeds=(11, 12))
    with Client(f.api) as client:
        first = client.submit(spec, idempotency_key="client-test-1")
        again = client.submit(spec, idempotency_key="client-test-1")
        assert first.id == again.id and not first.replayed and again.replayed
        assert first.n_trials == 6
        detail = client.cancel(first.id)
        assert detail.id == first.id and detail.counts.get("QUEUED", 0) == 0
        assert client.wait(first.id, poll=0.2, timeout=120).finished
        assert client.page_url(first.id) == f"{f.api}/studies/{first.id}/page"


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
        body = {"id": "s9", "name": "x", "n_trials": 4, "links": {
            "self": "/studies/s9", "trials": "t", "best": "b", "report": "r"}}  # fmt: skip
        return httpx.Response(200, json=body)

    created = _client(handler).submit(digits_spec())
    assert created.id == "s9" and created.replayed
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]


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


# README "The CLI": the report says which metric selected rho, and warns when it was test
def test_the_report_warns_when_rho_was_selected_on_the_test_set():
    from samsweep.cli.tables import selection_lines

    report = Report(
        objective="test_accuracy", selection_metric="test_accuracy", selected_on_test=True,
        counts={}, n_trials=0, groups=[], large_batch=[],
    )  # fmt: skip
    first, warning = selection_lines(report)
    assert first == "rho selected per group by the mean test_accuracy over seeds"
    assert warning.startswith("warning: rho was selected on the test set")
    report.selection_metric, report.selected_on_test = "val_accuracy", False
    assert selection_lines(report) == ["rho selected per group by the mean val_accuracy over seeds"]
