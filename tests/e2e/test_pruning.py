"""A pruning study on real parts (the API, two real Celery workers), on the embedded
default and on PostgreSQL + Redis (docs/spec.md "Pruning"): the median pruner stops the
configuration that cannot learn (lr 1e-7) at its grace epoch, and neither a good one nor
a mediocre one; the pruned trials are PRUNED in our tables and in Optuna's storage, with
their partial curves, and count toward the study's end."""

from __future__ import annotations

import httpx
import optuna

from samsweep.core.settings import Settings
from tests.support.http import wait_study
from tests.support.specs import digits_spec

EPOCHS, GRACE = 5, 2


def test_the_median_pruner_stops_what_cannot_learn_and_nothing_else(deployment):
    d = deployment
    api = d.start_api()
    d.start_worker("worker-1")
    d.start_worker("worker-2")
    # In trial order: lr 0.002 (mediocre), 0.05 (good), 1e-7 (cannot learn), two seeds each.
    # The first two to finish are the mediocre ones, so the good ones are judged against
    # them (each against its own seed's); the hopeless ones start only after some of those
    # finished.
    spec = digits_spec(rho=(0.05,), batch_size=(32,), epochs=EPOCHS, seeds=(0, 1),
                       dataset={"name": "digits", "val_fraction": 0.2},
                       objective="val_accuracy")  # fmt: skip
    spec["train"]["lr"] = [0.002, 0.05, 1e-7]
    # a trial is judged against its own seed's trials: one finished peer is enough here
    spec["pruner"] = {"name": "median", "min_epochs": GRACE, "startup_trials": 1}
    created = httpx.post(f"{api}/studies", json=spec)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    detail = wait_study(api, sid, timeout=300, d=d)
    assert detail["status"] == "complete" and detail["progress"]["finished"] == 6, detail
    assert detail["counts"]["PRUNED"] == 2 and detail["counts"]["COMPLETE"] == 4, detail

    trials = httpx.get(f"{api}/studies/{sid}/trials?curves=true").json()["trials"]
    for t in trials:
        if t["params"]["lr"] == 1e-7:
            assert t["state"] == "PRUNED" and t["epoch"] == GRACE, t
            assert [c["epoch"] for c in t["curves"]] == [1, GRACE] and t["metrics"] is None
        else:
            assert t["state"] == "COMPLETE" and t["epoch"] == EPOCHS, t

    name = detail["optuna_study_name"]
    url = Settings(
        state_dir=d.env["SAMSWEEP_STATE_DIR"], database_url=d.env.get("SAMSWEEP_DATABASE_URL")
    ).resolved_optuna_url
    frozen = {f.number: f for f in optuna.load_study(study_name=name, storage=url).trials}
    for t in trials:
        f = frozen[t["optuna_trial_number"]]
        pruned = t["state"] == "PRUNED"
        assert f.state == (optuna.trial.TrialState.PRUNED if pruned
                           else optuna.trial.TrialState.COMPLETE)  # fmt: skip
        # the pruner's input: validation accuracy, each epoch
        assert f.intermediate_values == {c["epoch"]: c["val_accuracy"] for c in t["curves"]}

    report = httpx.get(f"{api}/studies/{sid}/report").json()
    assert report["counts"]["PRUNED"] == 2, report["counts"]
