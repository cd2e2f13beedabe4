"""Credentials on a real uvicorn: with tokens configured, writes without a valid bearer
token get 401 and change nothing; with private studies, an owner sees only theirs.
(How the header and the configuration are read, in process: tests/service/test_auth.py.)"""

from __future__ import annotations

import httpx
import pytest

from tests.support.specs import digits_spec

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210xx"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(server_deployment):
    d = server_deployment
    d.env.update(SAMSWEEP_API_TOKENS=f"alice:{ALICE},bob:{BOB}", SAMSWEEP_PRIVATE_STUDIES="true")
    return d.start_api()


# docs/credentials.md "Tokens and owners": with tokens every write needs a bearer token, else 401
# and nothing changes
def test_writes_need_a_valid_token_and_refusals_change_nothing(api):
    for headers in ({}, _auth("wrong-token-but-long-enough"), {"Authorization": ALICE}):
        r = httpx.post(f"{api}/studies", json=digits_spec(), headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{api}/studies", headers=_auth(ALICE)).json()["total"] == 0
    created = httpx.post(f"{api}/studies", json=digits_spec(), headers=_auth(ALICE))
    assert created.status_code == 201
    study = created.json()["id"]
    assert httpx.post(f"{api}/studies/{study}/cancel").status_code == 401
    detail = httpx.get(f"{api}/studies/{study}", headers=_auth(ALICE)).json()
    assert detail["status"] != "cancelled" and detail["counts"]["CANCELLED"] == 0


# docs/credentials.md "Tokens and owners": `samsweep run` sends SAMSWEEP_API_TOKEN
def test_samsweep_run_sends_its_token(api, server_deployment, tmp_path):
    import json

    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(digits_spec()))
    d = server_deployment
    refused = d.run("run", str(spec_path), "--url", api, "--no-follow")
    assert refused.returncode == 1 and "401" in refused.stderr
    d.env["SAMSWEEP_API_TOKEN"] = BOB
    accepted = d.run("run", str(spec_path), "--url", api, "--no-follow")
    assert accepted.returncode == 0, accepted.stderr
    study = accepted.stdout.strip()
    assert httpx.get(f"{api}/studies/{study}", headers=_auth(BOB)).status_code == 200
    assert httpx.get(f"{api}/studies/{study}", headers=_auth(ALICE)).status_code == 404


# docs/credentials.md "Tokens and owners": a study belongs to its creator; with
# SAMSWEEP_PRIVATE_STUDIES reads need a token and each owner sees only their own studies (others'
# ids answer 404)
def test_each_owner_sees_only_their_studies(api):
    mine = httpx.post(f"{api}/studies", json=digits_spec(), headers=_auth(ALICE)).json()["id"]
    theirs = httpx.post(f"{api}/studies", json=digits_spec(), headers=_auth(BOB)).json()["id"]
    listed = httpx.get(f"{api}/studies", headers=_auth(ALICE)).json()
    assert [s["id"] for s in listed["items"]] == [mine]
    for suffix in ("", "/trials", "/best"):
        assert httpx.get(f"{api}/studies/{theirs}{suffix}", headers=_auth(ALICE)).status_code == 404
        assert httpx.get(f"{api}/studies/{mine}{suffix}", headers=_auth(ALICE)).status_code == 200
        assert httpx.get(f"{api}/studies/{mine}{suffix}").status_code == 401
    assert httpx.post(f"{api}/studies/{theirs}/cancel", headers=_auth(ALICE)).status_code == 404
    # the same Idempotency-Key is per owner
    key = {"Idempotency-Key": "k1"}
    a = httpx.post(f"{api}/studies", json=digits_spec(), headers=_auth(ALICE) | key).json()
    b = httpx.post(f"{api}/studies", json=digits_spec(), headers=_auth(BOB) | key).json()
    assert a["id"] != b["id"]
