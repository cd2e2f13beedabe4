"""GET /metrics on a real uvicorn of two processes, through a real study on a real worker
(docs/api.md "Metrics"): the trials counted by state as they end, the histograms filled,
and the processes' request counts summed, a killed process's included."""

from __future__ import annotations

import os
import signal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.service.test_api_processes import api_processes
from tests.support.http import wait_for, wait_study
from tests.support.specs import digits_spec


def scrape(api: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"{api}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def health_requests(samples: dict) -> float:
    name = "samsweep_http_request_duration_seconds_count"
    return sum(
        v for (n, labels), v in samples.items()
        if n == name and ("route", "/health") in labels and ("status", "200") in labels
    )  # fmt: skip


# docs/api.md "Metrics": through a real study the counts follow the trials, and with
# several API processes a scrape sums them all, a SIGKILLed one's counters included
def test_metrics_follow_a_real_study_across_two_api_processes(deployment):
    d = deployment
    api = d.start_api(workers=2)
    proc = d.procs[-1]
    d.start_worker()
    sid = httpx.post(f"{api}/studies", json=digits_spec(epochs=1)).json()["id"]
    wait_study(api, sid, timeout=240, d=d)
    samples = scrape(api)
    assert samples["samsweep_trials", (("state", "COMPLETE"),)] == 4
    assert samples["samsweep_trials", (("state", "QUEUED"),)] == 0
    assert samples["samsweep_trial_duration_seconds_count", ()] == 4
    assert samples["samsweep_dispatch_latency_seconds_count", ()] == 4
    assert ("samsweep_db_pool_in_use", ()) in samples
    for _ in range(30):
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    before = health_requests(scrape(api))
    assert before >= 30  # whichever process answered each: all are counted
    victim = sorted(api_processes(proc.pid))[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in api_processes(proc.pid) and len(api_processes(proc.pid)) == 2
             or None, 60, d, "the killed process replaced")  # fmt: skip
    assert health_requests(scrape(api)) >= before  # a counter never goes back
