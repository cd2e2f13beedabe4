"""Credentials in process (no uvicorn): a malformed token configuration stops the API at
start-up, how the Authorization header is read, and every configured token compared as
a digest. (On a real uvicorn: tests/e2e/service/test_auth_live.py.)"""

from __future__ import annotations

import pytest

from tests.support.specs import digits_spec

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210xx"


# docs/credentials.md "Tokens and owners": a malformed SAMSWEEP_API_TOKENS stops the API at start-up
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


# docs/credentials.md "Tokens and owners": tokens are compared as SHA-256 digests with
# `hmac.compare_digest` (in constant time) against every configured token (whichever matched)
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
