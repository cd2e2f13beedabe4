"""train.lr and train.weight_decay as grid axes on real parts (the API, a real Celery
worker, the embedded default): each trial trains with its own value, which its params
carry in the API and in Optuna's storage, and the report gives each value its group."""

from __future__ import annotations

import httpx
import optuna

from samsweep.core.settings import Settings
from tests.support.http import wait_study
from tests.support.specs import digits_spec


# docs/spec.md "The study spec": a list of learning rates (or weight decays) is a grid axis
def test_a_learning_rate_axis_runs_each_value_and_reports_it(deployment_factory):
    d = deployment_factory()
    assert d.run("migrate").returncode == 0
    api = d.start_api()
    d.start_worker()
    spec = digits_spec(rho=(0.0, 0.05), batch_size=(16,), epochs=1)
    spec["train"].update(lr=[0.1, 0.001], weight_decay=[0.0, 0.01])
    created = httpx.post(f"{api}/studies", json=spec).json()
    assert created["n_trials"] == 8, created
    wait_study(api, created["id"], timeout=240, d=d)
    trials = httpx.get(f"{api}/studies/{created['id']}/trials").json()["trials"]
    assert {(t["params"]["lr"], t["params"]["weight_decay"]) for t in trials} == {
        (0.1, 0.0), (0.1, 0.01), (0.001, 0.0), (0.001, 0.01)
    }  # fmt: skip
    assert all(t["state"] == "COMPLETE" for t in trials)
    # the values really reached the trainer: lr 0.001 for one epoch barely learns
    by_lr = {lr: [t["metrics"]["test_accuracy"] for t in trials if t["params"]["lr"] == lr]
             for lr in (0.1, 0.001)}  # fmt: skip
    assert min(by_lr[0.1]) > max(by_lr[0.001]), by_lr
    report = httpx.get(f"{api}/studies/{created['id']}/report").json()
    titles = [g["title"] for g in report["groups"]]
    assert "sgd, batch 16, lr 0.1, wd 0, sam" in titles and len(titles) == 4, titles
    name = httpx.get(f"{api}/studies/{created['id']}").json()["optuna_study_name"]
    url = Settings(state_dir=d.env["SAMSWEEP_STATE_DIR"]).resolved_optuna_url
    frozen = optuna.load_study(study_name=name, storage=url).get_trials()
    assert {(f.params["lr"], f.params["weight_decay"]) for f in frozen} == {
        (0.1, 0.0), (0.1, 0.01), (0.001, 0.0), (0.001, 0.01)
    }  # fmt: skip
    out = d.run("report", created["id"], "--server", api)
    assert out.returncode == 0 and "lr 0.001, wd 0.01" in out.stdout, out
