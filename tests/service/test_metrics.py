"""GET /metrics in process (no uvicorn): Prometheus text that parses, trials counted by
state from the database, request latency by route template, and nothing of a study (id,
name, owner) in it; with private studies, a valid token needed. (Through a real study on
a real uvicorn, and several API processes: tests/e2e/service/test_metrics_live.py.)"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.specs import digits_spec

ALICE = "alice-token-0123456789"


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, **labels: str) -> float:
    family = name.removesuffix("_count").removesuffix("_bucket").removesuffix("_sum")
    for sample in fams[family].samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    raise KeyError((name, labels))


@pytest.fixture
def client(tmp_path):
    from fastapi.testclient import TestClient

    from samsweep.core.migrate import migrate
    from samsweep.core.settings import Settings
    from service.app import create_app

    settings = Settings(state_dir=tmp_path, api_tokens=f"alice:{ALICE}", private_studies=True)
    migrate(settings)
    with TestClient(create_app(settings)) as c:
        yield c


# docs/api.md "Metrics": Prometheus text; trials by state from the database; requests by
# route template and status; no study id, name or owner anywhere; 401 without a token
# when studies are private
def test_metrics_count_trials_by_state_and_requests_by_route_leaking_no_study(client):
    auth = {"Authorization": f"Bearer {ALICE}"}
    assert client.get("/metrics").status_code == 401
    spec = digits_spec(name="secret-project-name")
    r = client.post("/studies", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert client.get(f"/studies/{sid}", headers=auth).status_code == 200
    assert client.get("/studies/s-nope", headers=auth).status_code == 404
    r = client.get("/metrics", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    fams = families(text)
    assert value(fams, "samsweep_trials", state="QUEUED") == 4  # 2 rho x 2 batch sizes
    assert value(fams, "samsweep_trials", state="COMPLETE") == 0
    assert value(fams, "samsweep_studies") == 1
    assert value(fams, "samsweep_queue_unsent") + value(fams, "samsweep_dispatch_in_flight") == 4
    assert value(fams, "samsweep_trial_duration_seconds_count") == 0
    route = "/studies/{study_id}"
    ok = value(fams, "samsweep_http_request_duration_seconds_count", route=route, status="200")
    missing = value(fams, "samsweep_http_request_duration_seconds_count", route=route, status="404")
    assert ok >= 1 and missing >= 1
    assert value(fams, "samsweep_http_request_duration_seconds_count", route="/studies",
                 method="POST", status="201") >= 1  # fmt: skip
    for secret in (sid, "s-nope", "secret-project-name", "alice", ALICE):
        assert secret not in text, secret
