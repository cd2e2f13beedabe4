"""The published contract matches the real one: every error status a route can answer
is documented with the one error shape (not FastAPI's default `{"detail": [...]}`),
the bearer scheme is declared, and /docs works offline (nothing loaded from a CDN)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from samsweep.core.settings import Settings
from service.app import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(state_dir=tmp_path_factory.mktemp("openapi"))
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def schema(client) -> dict:
    return client.get("/openapi.json").json()


EXPECTED = {
    ("post", "/studies"): {401, 409, 413, 422, 429, 503},
    ("get", "/studies"): {401, 422, 503},
    ("get", "/studies/{study_id}"): {401, 404, 422, 503},
    ("post", "/studies/{study_id}/cancel"): {401, 404, 422, 503},
    ("get", "/studies/{study_id}/trials"): {401, 404, 422, 503},
    ("get", "/studies/{study_id}/best"): {401, 404, 409, 422, 503},
    ("get", "/studies/{study_id}/report"): {401, 404, 409, 422, 503},
    ("get", "/studies/{study_id}/plots/{kind}"): {401, 404, 409, 422, 503},
    ("get", "/studies/{study_id}/page"): {404, 422, 503},
    ("get", "/overview"): {401, 422, 503},
}


# docs/api.md "Errors and states": the schema documents the error shape for every status a route
# can answer (401, 404, 409, 413, 422, 503)
@pytest.mark.parametrize("method,path", list(EXPECTED), ids=lambda x: str(x))
def test_error_statuses_are_documented_with_the_error_shape(schema, method, path):
    responses = schema["paths"][path][method]["responses"]
    errors = {int(code) for code in responses if int(code) >= 400}
    assert errors == EXPECTED[(method, path)]
    for code in errors:
        ref = responses[str(code)]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse"), (code, ref)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["components"]["schemas"]["ErrorInfo"]
    assert set(error["properties"]) == {"code", "message", "field", "details"}


# docs/api.md "Errors and states": errors always have the shape {"error": {code, message, field,
# ...}}
def test_the_real_422_has_the_documented_shape(client, schema):
    r = client.post("/studies", json={"name": "x"})
    assert r.status_code == 422
    documented = schema["components"]["schemas"]["ErrorInfo"]["properties"]
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == set(documented)


# docs/api.md "Errors and states": the schema documents the bearer scheme
def test_bearer_scheme_is_declared(schema):
    schemes = schema["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes.values())
    assert schema["paths"]["/studies"]["post"]["security"]


# docs/api.md "Errors and states": /docs is served by the API itself: it works on an offline cluster
def test_docs_load_nothing_remote(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assets += re.findall(r"""url: ?["']([^"']+)["']""", page.text)
    assert assets and not [a for a in assets if re.match(r"(https?:)?//", a)], assets
    for asset in assets:  # every script, style and the schema are served by the API itself
        assert client.get(asset).status_code == 200, asset
    assert "swagger-ui-bundle.js" in page.text
    assert client.get("/redoc").status_code == 404  # ReDoc would load its CDN: not served
