"""An Idempotency-Key header is visible ASCII, at most 200 characters, in process.
(Under concurrency, on a real uvicorn: tests/e2e/service/test_idempotency.py.)"""

from __future__ import annotations

import pytest

from tests.support.specs import digits_spec


# docs/api.md "Calls": an Idempotency-Key is visible ASCII, at most 200 characters
@pytest.mark.parametrize("key", ["has space", "nul\x01", "é", "x" * 201])
def test_malformed_keys_are_422(key):
    from fastapi.testclient import TestClient

    from samsweep.core.settings import Settings
    from service.app import create_app

    with TestClient(create_app(Settings(state_dir="/nonexistent"))) as client:
        r = client.post(
            "/studies",
            json=digits_spec(),
            headers={"Idempotency-Key": key.encode()},  # raw bytes on the wire
        )
    assert r.status_code == 422 and r.json()["error"]["field"] == "idempotency-key", r.text
