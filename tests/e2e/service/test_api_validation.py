"""Bad input against a real uvicorn on PostgreSQL + Redis: every refused spec gets 422
naming the field and creates nothing (no row, no Optuna study, no queued task)."""

from __future__ import annotations

import json
import uuid

import httpx
import optuna
import pytest
import redis
from sqlalchemy import create_engine, text

from samsweep.core.settings import Settings
from tests.support.db import REDIS, fresh_pg_database
from tests.support.processes import Deployment, base_env
from tests.support.specs import digits_spec

MAX_GRID = 50


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> tuple[str, Deployment]:
    tmp = tmp_path_factory.mktemp("validation")
    with fresh_pg_database() as db_url:
        queue = f"samsweep-test-{uuid.uuid4().hex[:8]}"
        d = Deployment(
            env=base_env(
                tmp,
                database_url=db_url,
                broker_url=REDIS,
                queue=queue,
                max_grid_trials=str(MAX_GRID),
            ),
            tmp=tmp,
        )
        assert d.run("migrate").returncode == 0
        try:
            yield d.start_api(), d
        finally:
            d.stop()


def _with(path: str, value) -> dict:
    """digits_spec() with one dotted field replaced (or removed when value is ...)."""
    spec = json.loads(json.dumps(digits_spec()))
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return spec


BAD_SPECS = [
    ("negative rho", _with("search.rho", [0.05, -0.1]), "search.rho.1"),
    ("empty rho", _with("search.rho", []), "search.rho"),
    ("empty batch sizes", _with("search.batch_size", []), "search.batch_size"),
    ("empty optimizers", _with("search.base_optimizer", []), "search.base_optimizer"),
    ("empty seeds", _with("seeds", []), "seeds"),
    ("duplicate rho", _with("search.rho", [0.1, 0.1]), "search.rho"),
    ("batch size 0", _with("search.batch_size", [0]), "search.batch_size.0"),
    ("batch above training set", _with("search.batch_size", [16, 5000]), "search.batch_size.1"),
    ("unknown dataset", _with("dataset", {"name": "imagenet"}), "dataset.name"),
    ("unknown model", _with("model.name", "vit"), "model.name"),
    ("unknown optimizer", _with("search.base_optimizer", ["lion"]), "search.base_optimizer.0"),
    (
        "path leaves data root",
        _with("dataset", {"name": "cifar10", "path": "../../etc"}),
        "dataset.path",
    ),
    (
        "absolute path outside root",
        _with("dataset", {"name": "cifar10", "path": "/etc"}),
        "dataset.path",
    ),
    ("cifar10 without path", _with("dataset", {"name": "cifar10"}), "dataset.path"),
    ("not a cifar directory", _with("dataset", {"name": "cifar10", "path": "."}), "dataset.path"),
    ("grid above maximum", _with("search.rho", [i / 100 for i in range(MAX_GRID + 1)]), "search"),
    ("epochs 0", _with("train.epochs", 0), "train.epochs"),
    ("missing train", _with("train", ...), "train"),
    ("unknown field", _with("pruner", "median"), "pruner"),
    ("val objective without val split", _with("objective", "val_accuracy"), "objective"),
    ("scaling without base batch", _with("train.lr_scaling", "linear"), "train.lr_scaling"),
    ("warmup as long as training", _with("train.warmup_epochs", 2), "train.warmup_epochs"),
    ("unknown schedule", _with("train.schedule", "onecycle"), "train.schedule"),
    ("m does not divide a batch size", _with("search.m", [None, 8, 12]), "search.m"),
    ("unknown sam variant", _with("search.sam_variant", ["gsam"]), "search.sam_variant.0"),
    ("flip augmentation on digits", _with("dataset.augment", "crop_flip"), "dataset.augment"),
    ("wrn depth not 6n+4", _with("model", {"name": "wrn", "depth": 15}), "model.depth"),
    ("cifar100 without path", _with("dataset", {"name": "cifar100"}), "dataset.path"),
    ("grad clip 0", _with("train.grad_clip", 0), "train.grad_clip"),
    ("sharpness subset negative", _with("sharpness", {"samples": -1}), "sharpness.samples"),
    ("label noise 1", _with("dataset.label_noise", 1.0), "dataset.label_noise"),
    ("string rho", _with("search.rho", ["big"]), "search.rho.0"),
    # What every trial would fail on, decided at the door (tests/core/test_admission.py proves
    # each boundary against the trainer):
    ("empty validation split", _with("dataset.val_fraction", 0.0003), "dataset.val_fraction"),
    (
        "resnet18 on digits, a last batch of one",
        {**_with("search.batch_size", [1436]), "model": {"name": "resnet18"}},
        "search.batch_size.0",
    ),
    (
        "resnet18 on digits, a micro-batch of one",
        {**_with("search.m", [None, 4]), "model": {"name": "resnet18"}},
        "search.m.1",
    ),
]


# docs/spec.md "Refused specs": a spec that cannot run is 422 naming the field (unknown fields,
# empty or duplicate lists, unknown dataset/model/optimizer, grid above the maximum, ...)
@pytest.mark.parametrize("case,spec,field", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_422_naming_the_field(api, case, spec, field):
    url, _ = api
    r = httpx.post(f"{url}/studies", json=spec)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_spec" and error["field"] == field, error
    assert error["message"].startswith(f"{field}:") or field in error["message"]


# docs/spec.md "Refused specs": negative or non-finite rho is 422
@pytest.mark.parametrize(
    "raw,field",
    [
        ('"rho": [NaN]', "search.rho.0"),
        ('"rho": [Infinity]', "search.rho.0"),
        ('"rho": [1e400]', "search.rho.0"),  # parses to inf
    ],
)
def test_non_finite_rho_is_422(api, raw, field):
    url, _ = api
    body = json.dumps(digits_spec()).replace('"rho": [0.0, 0.05]', raw)
    assert raw in body
    r = httpx.post(f"{url}/studies", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


# docs/api.md "Errors and states": malformed JSON is 4xx
@pytest.mark.parametrize(
    "body", ["{not json", "[]", "null", '"a string"', "", '{"name": 3}'], ids=repr
)
def test_malformed_body_is_422_never_500(api, body):
    url, _ = api
    r = httpx.post(f"{url}/studies", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert set(r.json()["error"]) == {"code", "message", "field", "details"}


# docs/api.md "Errors and states": an unknown id is 404
@pytest.mark.parametrize("suffix", ["", "/trials", "/best"])
def test_unknown_study_is_404(api, suffix):
    url, _ = api
    r = httpx.get(f"{url}/studies/{uuid.uuid4().hex}{suffix}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# docs/spec.md "Refused specs": a refused spec creates nothing (no row, no Optuna study, no task)
def test_refused_specs_created_nothing(api):
    """Runs after the cases above (file order): nothing reached any store."""
    _, d = api
    engine = create_engine(d.env["SAMSWEEP_DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM samsweep_studies")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM samsweep_trials")).scalar_one() == 0
    engine.dispose()
    optuna_url = Settings(database_url=d.env["SAMSWEEP_DATABASE_URL"]).resolved_optuna_url
    assert optuna.get_all_study_names(storage=optuna_url) == []
    assert redis.Redis.from_url(REDIS).llen(d.env["SAMSWEEP_QUEUE"]) == 0


# docs/api.md "Errors and states": OpenAPI at /openapi.json, Swagger UI at /docs
def test_openapi_and_docs_are_served(api):
    url, _ = api
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {
        "/studies",
        "/studies/{study_id}",
        "/studies/{study_id}/trials",
        "/studies/{study_id}/best",
        "/health",
    } <= set(schema["paths"])
    assert httpx.get(f"{url}/docs").status_code == 200
    health = httpx.get(f"{url}/health").json()
    assert health == {"status": "ok", "database": "ok", "broker": "ok"}
