"""Credentials on a real uvicorn: with tokens configured, writes without a valid bearer
token get 401 and change nothing; with private studies, an owner sees only theirs."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import digits_spec

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210xx"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(server_deployment):
    d = server_deployment
    d.env.update(SAMSWEEP_API_TOKENS=f"alice:{ALICE},bob:{BOB}", SAMSWEEP_PRIVATE_STUDIES="true")
    return d.start_api()


# README "Credentials": with tokens every write needs a bearer token, else 401 and nothing
# changes
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


# README "Credentials": `samsweep run` sends SAMSWEEP_API_TOKEN
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


# README "Credentials": a study belongs to its creator; with SAMSWEEP_PRIVATE_STUDIES reads
# need a token and each owner sees only their own studies (others' ids answer 404)
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


# README "Credentials": a malformed SAMSWEEP_API_TOKENS stops the API at start-up
@pytest.mark.parametrize(
    "tokens", ["alice:too-short", "no-colon-0123456789abcdef", ":0123456789abcdef"]
)
def test_malformed_token_configuration_fails_at_startup(tokens, tmp_path):
    from samsweep.core.settings import Settings
    from service.app import create_app

    with pytest.raises(ValueError, match="owner:token pairs"):
        create_app(Settings(api_tokens=tokens, state_dir=tmp_path))


@pytest.fixture(scope="module")
def private_app(tmp_path_factory):
    """In process (no uvicorn): how the Authorization header itself is read."""
    from fastapi.testclient import TestClient

    from samsweep.core.migrate import migrate
    from samsweep.core.settings import Settings
    from service.app import create_app

    settings = Settings(
        state_dir=tmp_path_factory.mktemp("auth"),
        api_tokens=f"alice:{ALICE}",
        private_studies=True,
    )
    migrate(settings)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "this call needs Authorization: Bearer <token>"),
        (f"Basic {ALICE}", "the Authorization header must be Bearer <token>"),
        ("Bearer", "the Authorization header must be Bearer <token>"),
        ("Bearer ", "the Authorization header must be Bearer <token>"),
        (ALICE, "the Authorization header must be Bearer <token>"),
        ("Bearer wrong-token-but-long-enough", "invalid token"),
    ],
)
def test_a_missing_or_malformed_authorization_header_is_a_401_naming_it(
    private_app, header, message
):
    headers = {} if header is None else {"Authorization": header}
    for r in (
        private_app.get("/studies", headers=headers),
        private_app.post("/studies", json=digits_spec(), headers=headers),
    ):
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.json()["error"]["message"] == message


def test_the_bearer_scheme_is_case_insensitive(private_app):
    r = private_app.get("/studies", headers={"Authorization": f"bearer {ALICE}"})
    assert r.status_code == 200, r.text


# README "Credentials": tokens are compared as SHA-256 digests with `hmac.compare_digest`
# against every configured token (docs/DESIGN.md §5: in constant time, whichever matched)
@pytest.mark.parametrize(
    ("presented", "owner"),
    [(ALICE, "alice"), (BOB, "bob"), ("mallory-token-0000000000", None)],
    ids=["first", "last", "none"],
)
def test_every_configured_token_is_compared_as_a_digest(monkeypatch, presented, owner):
    import hashlib
    import hmac

    from service import auth

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    tokens = f"alice:{ALICE},carol:{'c' * 20},bob:{BOB}"
    if owner is None:
        with pytest.raises(auth.Unauthorized):
            auth.owner_for(presented, tokens)
    else:
        assert auth.owner_for(presented, tokens) == owner
    digest = hashlib.sha256(presented.encode()).digest()
    assert len(compared) == 3  # the first, the last and no match alike: no early exit
    assert all(a == digest for a, _ in compared)
    assert sorted(b for _, b in compared) == sorted(
        hashlib.sha256(t.encode()).digest() for t in (ALICE, "c" * 20, BOB)
    )
