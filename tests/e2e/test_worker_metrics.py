"""A worker's own metrics on its port (docs/api.md "Metrics"): `samsweep worker
--metrics-port` serves its slots, the busy ones (summed over its pool's processes) and the
epochs they trained, through a real study."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.http import free_port, wait_for, wait_study
from tests.support.specs import digits_spec


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


# docs/api.md "Metrics": the worker's slots, slots busy while a trial trains, epochs
# trained (4 trials x 2 epochs), no GPU series on a host without one
def test_a_worker_serves_its_slots_busy_and_epochs(server_deployment):
    d = server_deployment
    api = d.start_api()
    port = free_port()
    d.start_worker("worker", "--concurrency", "2", "--metrics-port", str(port))
    wait_for(lambda: _up(port), 60, d, "the worker's metrics port")
    assert scrape(port)["samsweep_worker_slots"] == 2
    sid = httpx.post(f"{api}/studies", json=digits_spec(epochs=2)).json()["id"]
    wait_for(lambda: scrape(port).get("samsweep_worker_slots_busy", 0) >= 1 or None, 120, d,
             "a busy slot")  # fmt: skip
    wait_study(api, sid, timeout=240, d=d)
    samples = scrape(port)
    assert samples["samsweep_worker_epochs_total"] == 8
    assert samples["samsweep_worker_slots_busy"] == 0
    assert not any(name.startswith("samsweep_gpu_") for name in samples)


def _up(port: int) -> bool | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200 or None
    except httpx.TransportError:
        return None
