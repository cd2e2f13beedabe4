"""POST /studies/{id}/cancel on real parts: queued trials are cancelled at once, the
running one stops at its next epoch boundary, finished results stay."""

from __future__ import annotations

import httpx

from tests.support.http import wait_for, wait_study
from tests.support.specs import digits_spec


# docs/api.md "Calls": cancel: queued trials CANCELLED at once, running ones stop at their
# next epoch boundary, finished results stay, status becomes `cancelled`
def test_cancel_mid_study(server_deployment):
    d = server_deployment
    api = d.start_api()
    d.start_worker()
    spec = digits_spec(rho=(0.0, 0.05), batch_size=(16, 32), epochs=30, seeds=(0, 1))
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]

    def one_done_one_mid_training():
        trials = httpx.get(f"{api}/studies/{study}/trials").json()["trials"]
        running = [t for t in trials if t["state"] == "RUNNING" and t["epoch"] >= 1]
        if running and any(t["state"] == "COMPLETE" for t in trials):
            return trials, running
        return None

    trials, running = wait_for(
        one_done_one_mid_training, 120, d, "a finished trial and one mid-training"
    )
    r = httpx.post(f"{api}/studies/{study}/cancel")
    assert r.status_code == 200 and r.json()["counts"]["QUEUED"] == 0
    detail = wait_study(api, study, timeout=60, d=d)
    assert detail["status"] == "cancelled"
    after = {t["number"]: t for t in httpx.get(f"{api}/studies/{study}/trials").json()["trials"]}
    before = {t["number"]: t for t in trials}
    for number, t in before.items():
        if t["state"] == "COMPLETE":  # finished results stay, untouched
            assert after[number]["state"] == "COMPLETE"
            assert after[number]["metrics"] == t["metrics"]
    stopped = after[running[0]["number"]]
    assert stopped["state"] == "CANCELLED" and 1 <= stopped["epoch"] < 30
    assert {t["state"] for t in after.values()} <= {"COMPLETE", "CANCELLED"}
    assert httpx.post(f"{api}/studies/{study}/cancel").json()["status"] == "cancelled"
    best = httpx.get(f"{api}/studies/{study}/best").json()
    assert best["best"] is not None and best["status"] == "cancelled"
