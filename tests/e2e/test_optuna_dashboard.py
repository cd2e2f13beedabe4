"""optuna-dashboard side by side (issue 10, item 7): a real study run by the API and a
worker on PostgreSQL + Redis, then optuna-dashboard's own server started on the same
storage, as the production compose file starts it (the read-only role, Optuna's schema
through search_path), read through its JSON API: the study under its readable name,
the objective named, the trials' params, and each trial's train/validation/test
accuracy per epoch as a figure, equal to samsweep's own curves."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from samsweep.core.settings import Settings
from tests.support.http import free_port, wait_for, wait_study
from tests.support.specs import digits_spec

DASHBOARD = Path(sys.executable).with_name("optuna-dashboard")


def _dashboard_role(d, role: str, password: str) -> str:
    """Migrate again with a dashboard password: the read-only role compose gives
    optuna-dashboard; its URL on Optuna's storage."""
    d.env.update(SAMSWEEP_DASHBOARD_DB_ROLE=role, SAMSWEEP_DASHBOARD_DB_PASSWORD=password)
    result = d.run("migrate")
    assert result.returncode == 0, result.stderr
    url = Settings(database_url=d.env["SAMSWEEP_DATABASE_URL"]).resolved_optuna_url
    return make_url(url).set(username=role, password=password).render_as_string(False)


def _drop_role(db_url: str, role: str) -> None:
    """Roles outlive the test's database: drop this one's grants, then the role."""
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    engine.dispose()


# docs/report.md "optuna-dashboard, side by side": the same storage in optuna-dashboard shows the
# study by its name, the objective by name, the grid as params, and per trial a figure of train,
# validation and test accuracy per epoch (beside the objective's intermediate values)
def test_optuna_dashboard_reads_the_study_through_its_json_api(server_deployment, tmp_path):
    d = server_deployment
    api = d.start_api()
    d.start_worker()
    spec = digits_spec(
        rho=(0.0, 0.05),
        batch_size=(32,),
        epochs=2,
        dataset={"name": "digits", "val_fraction": 0.2},
        objective="val_accuracy",
    )
    r = httpx.post(f"{api}/studies", json=spec)
    assert r.status_code == 201, r.text
    study_id = r.json()["id"]
    assert wait_study(api, study_id, d=d)["counts"]["COMPLETE"] == 2
    trials = httpx.get(f"{api}/studies/{study_id}/trials?curves=true").json()["trials"]

    role, log = f"samsweep_dash_{uuid.uuid4().hex[:8]}", tmp_path / "dashboard.log"
    url = _dashboard_role(d, role, "dash-pw")
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(DASHBOARD), "--host", "127.0.0.1", "--port", str(port), "--quiet", url],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    dash = f"http://127.0.0.1:{port}"
    try:

        class Logs:
            def logs(self) -> str:
                return f"exit {proc.poll()}\n{log.read_text()[-4000:]}"

        def listed():
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited\n{Logs().logs()}")
            try:
                r = httpx.get(f"{dash}/api/studies", timeout=5)
            except httpx.TransportError:
                return None
            return r.json()["study_summaries"] if r.status_code == 200 else None

        (summary,) = wait_for(listed, 60, Logs(), "optuna-dashboard to answer")
        # the readable name: the spec's name, made unique by samsweep's id
        assert summary["study_name"] == f"digits-test-{study_id}"
        assert summary["directions"] == ["maximize"]
        attrs = {a["key"]: a["value"] for a in summary["user_attrs"]}
        assert attrs == {
            "samsweep_study_id": study_id,
            "objective": "val_accuracy",
            "spec_name": "digits-test",
            "samsweep_param_space": "2",  # optuna_store.PARAM_SPACE: the axes as ranges
        }

        r = httpx.get(f"{dash}/api/studies/{summary['study_id']}", timeout=30)
        assert r.status_code == 200, r.text
        detail = r.json()
        assert detail["objective_names"] == ["val_accuracy"]  # the objective, named
        by_number = {t["number"]: t for t in detail["trials"]}
        figures = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
        assert len(by_number) == 2 and set(figures) == {f"trial-{n}" for n in by_number}
        for t in trials:
            number, curves = t["optuna_trial_number"], t["curves"]
            seen = by_number[number]
            assert seen["state"] == "Complete" and seen["values"] == [t["value"]]
            # the grid's axes as params (their values as the dashboard prints them)
            params = {p["name"]: p["param_external_value"] for p in seen["params"]}
            # conditional params: a baseline has no SAM variant or m, a whole batch no m
            expected = {k: str(v) for k, v in t["params"].items() if k != "seed" and v is not None}
            assert params == expected
            user_attrs = {a["key"]: a["value"] for a in seen["user_attrs"]}
            assert user_attrs["seed"] == str(t["params"]["seed"])
            # the objective per epoch: the dashboard's live intermediate-values curve
            assert {(v["step"], v["value"]) for v in seen["intermediate_values"]} == {
                (c["epoch"], c["val_accuracy"]) for c in curves
            }
            # train / validation / test per epoch: the trial's figure, equal to our curves
            fig = figures[f"trial-{number}"]
            lines = {line["name"]: (line["x"], line["y"]) for line in fig["data"]}
            epochs = [c["epoch"] for c in curves]
            assert epochs == [1, 2] and lines == {
                "train": (epochs, [c["train_accuracy"] for c in curves]),
                "validation": (epochs, [c["val_accuracy"] for c in curves]),
                "test": (epochs, [c["test_accuracy"] for c in curves]),
            }
            assert fig["layout"]["title"]["text"].startswith(f"Trial {number}: ρ=")
            assert fig["layout"]["xaxis"]["title"]["text"] == "epoch"

        # the dashboard's role reads and changes nothing: its DELETE fails, the study stays
        r = httpx.delete(f"{dash}/api/studies/{summary['study_id']}", timeout=30)
        assert r.status_code >= 400
        assert len(httpx.get(f"{dash}/api/studies", timeout=5).json()["study_summaries"]) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        _drop_role(d.env["SAMSWEEP_DATABASE_URL"], role)
