"""Studies that grow, retry and delete on real parts (the API, real Celery workers), on the
embedded default and on PostgreSQL + Redis, through the CLI's entry point and the Python
client: a study extended by a seed and a ρ runs exactly the new trials and leaves the
others as they were (rows, metrics, Optuna trials); a retry gives failed and cancelled
trials a fresh attempt; a delete stops the running trial at its epoch and removes the
rows, the Optuna study and the checkpoints. (In process:
tests/service/test_grow_retry_delete.py.)"""

from __future__ import annotations

import time

import httpx
import optuna

from samsweep import Client
from samsweep.core.settings import Settings
from tests.support.http import wait_for, wait_study
from tests.support.processes import Deployment
from tests.support.specs import digits_spec


def _settings(d: Deployment) -> Settings:
    return Settings(
        state_dir=d.env["SAMSWEEP_STATE_DIR"], database_url=d.env.get("SAMSWEEP_DATABASE_URL")
    )


def _optuna(d: Deployment, name: str) -> list[optuna.trial.FrozenTrial]:
    url = _settings(d).resolved_optuna_url
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _trials(api: str, study: str) -> list[dict]:
    return httpx.get(f"{api}/studies/{study}/trials", params={"limit": 1000}).json()["trials"]


def _cli(d: Deployment, api: str, *args: str) -> str:
    result = d.run(*args, "--server", api)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result
    return result.stdout


# docs/api.md "Studies that grow": a study extended by one seed and one ρ runs exactly the new
# trials; its earlier trials are unchanged (ids, metrics, Optuna trials); a complete study that
# grows runs again; docs/cli.md "Existing studies, from the terminal": `samsweep extend`
def test_a_grown_study_runs_exactly_the_new_trials(deployment):
    d = deployment
    api = d.start_api()
    d.start_worker()
    spec = digits_spec(rho=(0.0, 0.05), batch_size=(16,))
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    wait_study(api, study, timeout=180, d=d)
    before = _trials(api, study)
    name = httpx.get(f"{api}/studies/{study}").json()["optuna_study_name"]
    optuna_before = {(t.number, t.value, t.state) for t in _optuna(d, name)}

    out = _cli(d, api, "extend", study, "--seeds", "1", "--rho", "0.1")
    assert f"study {study}: 4 new trial(s), 6 in all" in out, out
    detail = wait_study(api, study, timeout=240, d=d)
    assert detail["status"] == "complete" and detail["counts"]["COMPLETE"] == 6, detail
    after = _trials(api, study)
    assert after[:2] == before  # ids, numbers, metrics, curves' epoch, Optuna ids: as they were
    new = after[2:]
    assert {(t["params"]["rho"], t["params"]["seed"]) for t in new} == {
        (0.0, 1), (0.05, 1), (0.1, 0), (0.1, 1)
    }  # fmt: skip
    assert all(t["attempts"] == 1 and t["state"] == "COMPLETE" for t in new), new
    frozen = _optuna(d, name)
    assert len(frozen) == 6 and optuna_before <= {(t.number, t.value, t.state) for t in frozen}
    rows = httpx.get(f"{api}/studies/{study}/report").json()["groups"][0]["rows"]
    assert [(r["rho"], r["seeds"]) for r in rows] == [(0.0, [0, 1]), (0.05, [0, 1]), (0.1, [0, 1])]


# docs/api.md "Retry": FAILED and CANCELLED trials get a fresh attempt (attempts goes up); a
# cancelled study is resumed; Client.retry, `samsweep retry`
def test_retry_runs_failed_and_cancelled_trials_again(server_deployment):
    d = server_deployment
    api = d.start_api()
    diverging = digits_spec(rho=(0.05,), batch_size=(64,), epochs=2)
    diverging["train"].update(lr=10.0, weight_decay=1.0)  # NaN in the first epoch
    failing = httpx.post(f"{api}/studies", json=diverging).json()["id"]
    cancelled = httpx.post(f"{api}/studies", json=digits_spec()).json()["id"]
    assert httpx.post(f"{api}/studies/{cancelled}/cancel").json()["status"] == "cancelled"
    d.start_worker()
    wait_study(api, failing, timeout=120, d=d)
    (t,) = _trials(api, failing)
    assert t["state"] == "FAILED" and t["attempts"] == 1, t

    with Client(api) as client:
        retried = client.retry(cancelled)
        assert retried.retried == 4 and retried.status != "cancelled", retried
        detail = client.wait(cancelled, timeout=240)
        assert detail.status == "complete" and detail.counts["COMPLETE"] == 4, detail
    assert all(t["attempts"] == 1 for t in _trials(api, cancelled))  # never run before

    out = _cli(d, api, "retry", failing)
    assert f"study {failing}: 1 trial(s) queued again" in out, out
    wait_for(lambda: _trials(api, failing)[0]["attempts"] == 2 or None, 120, d, "the retry")
    wait_study(api, failing, timeout=120, d=d)
    (t,) = _trials(api, failing)
    assert t["state"] == "FAILED" and t["error"].startswith("diverged"), t  # as it will


# docs/api.md "Delete": the running trial stops at its next epoch; rows, Optuna study and
# checkpoints removed; 404 afterwards, a second DELETE too; the worker goes on with other
# studies; Client.delete, `samsweep delete`
def test_delete_stops_the_running_trial_and_removes_everything(deployment):
    d = deployment
    api = d.start_api()
    d.start_worker()
    study = httpx.post(f"{api}/studies", json=digits_spec(epochs=200, batch_size=(16,))).json()
    sid = study["id"]
    name = httpx.get(f"{api}/studies/{sid}").json()["optuna_study_name"]
    checkpoints = _settings(d).resolved_checkpoint_dir / sid
    wait_for(
        lambda: any(t["epoch"] >= 2 for t in _trials(api, sid)) and checkpoints.exists() or None,
        120, d, "a running trial with a checkpoint",
    )  # fmt: skip
    with Client(api) as client:
        client.delete(sid)
        assert httpx.get(f"{api}/studies/{sid}").status_code == 404
        assert httpx.delete(f"{api}/studies/{sid}").status_code == 404
        client.delete(sid, missing_ok=True)
    url = _settings(d).resolved_optuna_url
    assert name not in {s.study_name for s in optuna.get_all_study_summaries(storage=url)}
    # the worker stops at its next epoch: it finds the rows gone, or the study cancelled
    # first (a DELETE cancels, then removes); either way the checkpoints go
    stopped = ("'deleted'", "'cancelled'")
    wait_for(lambda: any(s in d.logs() for s in stopped) or None, 60, d, "the trial to stop")
    wait_for(lambda: not checkpoints.exists() or None, 30, d, "the checkpoints to go")
    other = httpx.post(f"{api}/studies", json=digits_spec(rho=(0.0,), batch_size=(16,))).json()
    assert wait_study(api, other["id"], timeout=120, d=d)["status"] == "complete"
    out = _cli(d, api, "delete", other["id"], "--yes")
    assert f"deleted study {other['id']}" in out
    refused = d.run("delete", other["id"], "--yes", "--server", api)
    assert refused.returncode == 1 and "404" in refused.stderr, refused
    time.sleep(1)
    assert httpx.get(f"{api}/studies").json()["total"] == 0
