"""The Python client, `samsweep.Client`, against a running API and worker: its answers
are the API's JSON parsed into typed models (the report into the core's own
`samsweep.core.report.Report`), `to_dataframe()` gives the report's CSV columns, and an
error answer is a typed exception carrying the API's code. (Against a fake transport, in
process: tests/client/test_client.py.)"""

from __future__ import annotations

import httpx
import pytest

from samsweep import Client
from samsweep.client import (
    ApiError,
    InvalidRequest,
    NotAStudyId,
    NotFound,
)
from samsweep.core.report import CSV_COLUMNS, Report
from tests.support.specs import digits_spec

UNKNOWN = "0" * 32  # well-formed, and no study has it


# docs/cli.md "Python client": report() is samsweep.core.report.Report, equal to the API's JSON
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


# docs/cli.md "Python client": studies(), study(), trials() (every page), best(), typed
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


# docs/cli.md "Python client": an API error is a typed exception with the API's code
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


# docs/cli.md "Python client": the same Idempotency-Key submits one study
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
