"""The whole path on real parts: POST /studies -> Celery worker -> SAM training ->
Optuna in SQL -> GET /studies/{id}/best.

PostgreSQL + Redis with uvicorn and Celery as subprocesses, then the embedded
default (SQLite + SQLite broker) through `samsweep run`, then two workers racing
over one study whose every task is delivered twice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from samsweep.core.queue import enqueue_trial, make_celery
from samsweep.core.settings import Settings
from tests.support.db import trial_rows
from tests.support.http import free_port, wait_study
from tests.support.specs import digits_spec


def _optuna_trials(optuna_url: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=study_name, storage=optuna_url)
    return study.get_trials(deepcopy=False)


def _dashboard_figures(optuna_url: str, study_name: str) -> set[str]:
    from optuna_dashboard import wsgi

    transport = httpx.WSGITransport(app=wsgi(optuna_url))
    with httpx.Client(transport=transport, base_url="http://dashboard") as c:
        studies = c.get("/api/studies").json()["study_summaries"]
        (study_id,) = [s["study_id"] for s in studies if s["study_name"] == study_name]
        detail = c.get(f"/api/studies/{study_id}").json()
    return {g["id"] for g in detail["plotly_graph_objects"]}


def _check_complete_study(api: str, study_id: str, optuna_url: str, n: int) -> dict:
    """Shared assertions: n COMPLETE trials in the API and in Optuna, values equal,
    best is their maximum."""
    trials = httpx.get(f"{api}/studies/{study_id}/trials?curves=true").json()["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * n
    best = httpx.get(f"{api}/studies/{study_id}/best").json()
    assert best["complete"] and best["counts"]["COMPLETE"] == n

    detail = httpx.get(f"{api}/studies/{study_id}").json()
    # readable in optuna-dashboard: the spec's name, made unique by the id
    assert detail["optuna_study_name"] == f"{detail['name']}-{study_id}"
    frozen = _optuna_trials(optuna_url, detail["optuna_study_name"])
    assert len(frozen) == n and all(f.state == TrialState.COMPLETE for f in frozen)
    by_number = {f.number: f for f in frozen}
    for t in trials:
        f = by_number[t["optuna_trial_number"]]
        m = t["metrics"]
        assert f.value == pytest.approx(m["test_accuracy"], abs=0) and t["value"] == f.value
        # the grid axes are Optuna params; the seed is not a hyperparameter, and SAM's
        # variant and m are conditional: a baseline (rho 0) has neither, a whole batch no m
        assert f.params == {k: v for k, v in t["params"].items() if k != "seed" and v is not None}
        assert ("sam_variant" in f.params) == (t["params"]["rho"] > 0)
        assert f.user_attrs["seed"] == t["params"]["seed"]
        # each epoch's test accuracy was reported to Optuna
        assert f.intermediate_values == {c["epoch"]: c["test_accuracy"] for c in t["curves"]}
        assert m["gap"] == pytest.approx(m["train_accuracy"] - m["test_accuracy"])
        for key in ("train_loss", "test_loss", "epochs", "wall_seconds", "samples_per_second"):
            assert key in m and f.user_attrs[key] == m[key]
    assert best["best"]["value"] == max(f.value for f in frozen)
    assert best["best"]["metrics"]["test_accuracy"] == best["best"]["value"]
    # each trial's learning curves are a figure in optuna-dashboard (its JSON API, in process;
    # tests/e2e/test_optuna_dashboard.py reads them from its own server)
    assert _dashboard_figures(optuna_url, detail["optuna_study_name"]) == {
        f"trial-{t['optuna_trial_number']}" for t in trials
    }
    _check_report(api, study_id, trials, best)
    return best


# docs/report.md "The report": /report over the study's real trials (mean ± std over seeds per
# cell, counts), the same as CSV, and /best's cell is the best mean over seeds
def _check_report(api: str, study_id: str, trials: list[dict], best: dict) -> None:
    import csv
    import io
    import statistics

    report = httpx.get(f"{api}/studies/{study_id}/report").json()
    cells: dict[tuple, list[dict]] = {}
    for t in trials:
        p = t["params"]
        cells.setdefault((p["batch_size"], p["rho"]), []).append(t)
    seen = 0
    for g in report["groups"]:
        for row in g["rows"]:
            ts = cells[(g["batch_size"], row["rho"])]
            acc = [t["metrics"]["test_accuracy"] for t in ts]
            stat = row["metrics"]["test_accuracy"]
            assert stat["n"] == len(acc) and stat["mean"] == pytest.approx(statistics.mean(acc))
            if len(acc) > 1:
                assert stat["std"] == pytest.approx(statistics.stdev(acc))
            assert row["counts"] == {"COMPLETE": len(ts)}
            seen += 1
    assert seen == len(cells) and report["selected_on_test"] == (
        report["selection_metric"] == "test_accuracy"
    )
    r = httpx.get(f"{api}/studies/{study_id}/report", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == seen
    means = {
        (g["batch_size"], row["rho"]): row["metrics"][best["objective"]]["mean"]
        for g in report["groups"]
        for row in g["rows"]
    }
    cell = best["cell"]
    assert means[(cell["batch_size"], cell["rho"])] == max(means.values())
    assert cell["objective"]["mean"] == max(means.values())


# README intro and docs/api.md "Calls": POST -> workers -> Optuna -> /best; the same numbers
# on the Optuna trial (value, metrics as user attributes, per-epoch intermediate values),
# study named <name>-<id>, grid axes as params, the seed a user attribute
def test_postgres_redis_end_to_end(server_deployment):
    d = server_deployment
    api = d.start_api()
    d.start_worker()
    r = httpx.post(f"{api}/studies", json=digits_spec(sharpness={"samples": 128}))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["n_trials"] == 4 and r.headers["location"] == f"/studies/{body['id']}"

    detail = wait_study(api, body["id"], d=d)
    assert detail["status"] == "complete" and detail["progress"]["fraction"] == 1.0
    assert detail["counts"]["COMPLETE"] == 4 and detail["timings"]["elapsed_seconds"] > 0
    optuna_url = Settings(database_url=d.env["SAMSWEEP_DATABASE_URL"]).resolved_optuna_url
    best = _check_complete_study(api, body["id"], optuna_url, 4)
    assert best["best"]["metrics"]["test_accuracy"] > 0.5  # 2 epochs on digits learn something
    metrics = best["best"]["metrics"]
    assert metrics["sharpness"] > 0 and metrics["hessian_max_eig"] > 0
    assert metrics["precision"] == "fp32" and metrics["effective_lr"] == 0.05

    listed = httpx.get(f"{api}/studies").json()
    assert listed["total"] == 1 and listed["items"][0]["status"] == "complete"


# README.md "A first study and its report" and docs/cli.md "The CLI": `samsweep run` with no API
# starts `samsweep up` (SQLite files and the embedded broker under the state dir) and prints trials
# and best
def test_embedded_default_through_samsweep_run(deployment_factory, tmp_path: Path):
    """`samsweep run` with no servers: it starts `samsweep up` (SQLite files and the
    embedded broker under the state directory), follows the study and prints it."""

    d = deployment_factory()
    d.env["SAMSWEEP_API_URL"] = f"http://127.0.0.1:{free_port()}"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(digits_spec()))
    result = d.run("run", str(spec_path), timeout=300)
    assert result.returncode == 0, (
        result.stdout + result.stderr + (tmp_path / "state" / "up.log").read_text()
    )
    out = result.stdout
    assert re.search(
        r"best by test_accuracy: sgd batch (16|64) (rho 0|sam 0\.05) seed 0: test \d+\.\d\d%", out
    )
    assert out.count("COMPLETE") == 4 and "4 trials, 4 complete" in out
    # then the report's tables, and the study's page
    assert "report: 4 trials (4 complete)" in out and "SAM's gain at rho 0.05" in out, out
    assert "warning: rho was selected on the test set" in out  # the spec has no split
    # the embedded server stops with `run`: the page line says how to reopen it
    page = r"^page: http://127\.0\.0\.1:\d+/studies/\w+/page  \(served while `samsweep up` runs"
    assert re.search(page, out, re.M), out

    state = tmp_path / "state"
    assert {"samsweep.sqlite", "optuna.sqlite", "broker.sqlite"} <= {
        p.name for p in state.iterdir()
    }
    from sqlalchemy import create_engine, text

    with create_engine(f"sqlite:///{state}/samsweep.sqlite").connect() as conn:
        study_id = conn.execute(text("SELECT id FROM samsweep_studies")).scalar_one()
        rows = conn.execute(text("SELECT value FROM samsweep_trials WHERE state='COMPLETE'")).all()
    frozen = _optuna_trials(f"sqlite:///{state}/optuna.sqlite", f"digits-test-{study_id}")
    assert sorted(f.value for f in frozen) == sorted(v for (v,) in rows)
    assert _dashboard_figures(f"sqlite:///{state}/optuna.sqlite", f"digits-test-{study_id}") == {
        f"trial-{f.number}" for f in frozen
    }
    best_line = next(line for line in out.splitlines() if line.startswith("best by"))
    assert f"test {100 * max(f.value for f in frozen):.2f}%" in best_line


# docs/faults.md "The fault contract": every task delivered twice, two workers racing: 0 lost, 0
# trained twice (a second delivery finds the row claimed and returns without training)
def test_two_workers_every_task_delivered_twice(server_deployment):
    """Two workers race over one study whose every task is sent twice: each cell is
    trained exactly once and Optuna holds exactly one COMPLETE trial per cell."""
    d = server_deployment
    api = d.start_api()
    d.start_worker("worker-a")
    d.start_worker("worker-b")
    spec = digits_spec(rho=(0.0, 0.05, 0.1), batch_size=(32, 128), epochs=1, seeds=(0, 1))
    study_id = httpx.post(f"{api}/studies", json=spec).json()["id"]
    settings = Settings(broker_url=d.env["SAMSWEEP_BROKER_URL"], queue=d.env["SAMSWEEP_QUEUE"])
    celery = make_celery(settings)
    ids = [row["id"] for row in trial_rows(d.env["SAMSWEEP_DATABASE_URL"], study_id)]
    for trial_id in ids:  # the duplicate deliveries
        enqueue_trial(celery, settings.queue, trial_id)

    wait_study(api, study_id, d=d)
    optuna_url = Settings(database_url=d.env["SAMSWEEP_DATABASE_URL"]).resolved_optuna_url
    _check_complete_study(api, study_id, optuna_url, 12)
    trials = httpx.get(f"{api}/studies/{study_id}/trials").json()["trials"]
    assert all(t["attempts"] == 1 for t in trials)
    cells = {(t["params"]["rho"], t["params"]["batch_size"], t["params"]["seed"]) for t in trials}
    assert len(cells) == 12
    frozen = _optuna_trials(optuna_url, f"digits-test-{study_id}")
    assert len({(*sorted(f.params.items()), f.user_attrs["seed"]) for f in frozen}) == 12
    worker_logs = "".join(p.log_path.read_text() for p in d.procs[1:])
    assert worker_logs.count(": 'complete'") == 12 and worker_logs.count(": 'skipped'") == 12
