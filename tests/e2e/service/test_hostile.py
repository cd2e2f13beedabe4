"""Hostile input against a real uvicorn on PostgreSQL + Redis, as an attacker would send
it: grids whose size is a product of huge list lengths, huge lists, NUL bytes and huge
strings, booleans and strings where numbers belong, deep nesting, ids that cannot be ids.
Every answer is a 4xx naming the field (or a 404), never a 5xx; a refusal changes
nothing; and one request can neither hold the API (the refusal comes back quickly and
other requests are answered meanwhile) nor blow up its memory.

The time and memory bounds below are guards against a denial of service (seconds and
hundreds of MB), not speed claims: those are in benchmarks/."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import psutil
import pytest
import redis
from sqlalchemy import create_engine, text

from tests.support.db import REDIS, fresh_pg_database
from tests.support.processes import Deployment, base_env
from tests.support.specs import digits_spec

SLOW = 2.0  # seconds: a refusal that takes this long is a denial of service
FAT = 100 * 2**20  # bytes of API memory growth over the whole module


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    with fresh_pg_database() as db_url:
        queue = f"samsweep-test-{uuid.uuid4().hex[:8]}"
        d = Deployment(
            env=base_env(tmp, database_url=db_url, broker_url=REDIS, queue=queue), tmp=tmp
        )
        assert d.run("migrate").returncode == 0
        try:
            url = d.start_api()
            api = psutil.Process(d.procs[0].pid)
            yield url, d, db_url, api, api.memory_info().rss
        finally:
            d.stop()
            redis.Redis.from_url(REDIS).delete(queue)


def _post(url: str, body) -> tuple[httpx.Response, float]:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    t = time.monotonic()
    r = httpx.post(
        f"{url}/studies", content=content, headers={"content-type": "application/json"}, timeout=60
    )
    return r, time.monotonic() - t


def _spec_with(path: str, value) -> dict:
    spec = json.loads(json.dumps(FULL))
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


# A valid spec that sets every numeric field, so each can be attacked in turn.
FULL = digits_spec(rho=(0.0, 0.05), batch_size=(16, 32), seeds=(0, 1))
FULL["dataset"].update(val_fraction=0.1, label_noise=0.1)
FULL["model"] = {"name": "wrn", "depth": 10, "width": 1, "dropout": 0.1}
FULL["search"]["m"] = [None, 8]
FULL["train"].update(
    base_batch_size=16, lr_scaling="sqrt", warmup_epochs=1.0, grad_clip=5.0, label_smoothing=0.1
)
FULL["sharpness"] = {"samples": 64, "rho": 0.05, "ascent_steps": 2, "hessian_iters": 3}
FLOATS = [
    "dataset.val_fraction", "dataset.label_noise", "model.dropout", "search.rho.1",
    "train.lr", "train.warmup_epochs", "train.momentum", "train.weight_decay",
    "train.grad_clip", "train.label_smoothing", "sharpness.rho",
]  # fmt: skip
INTS = [
    "model.depth", "model.width", "search.batch_size.0", "search.m.1", "seeds.1", "train.epochs",
    "train.base_batch_size", "sharpness.samples", "sharpness.ascent_steps",
    "sharpness.hessian_iters",
]  # fmt: skip


def test_the_full_spec_is_valid(live):
    url, *_ = live
    r, _ = _post(url, FULL)
    assert r.status_code == 201, r.text


# docs/spec.md "The study spec" and docs/api.md "The door": a boolean or a string is never a number
@pytest.mark.parametrize("field", FLOATS + INTS)
@pytest.mark.parametrize("value", [True, False, "0.1", "1", None, [1], {"x": 1}], ids=repr)
def test_a_number_must_be_a_number(live, field, value):
    url, *_ = live
    if value is None and field in ("train.grad_clip", "search.m.1", "model.depth", "model.width",
                                   "train.base_batch_size"):  # fmt: skip
        pytest.skip("null is this field's documented 'off'")
    if value == [1] and field in ("train.lr", "train.weight_decay"):
        pytest.skip("a list is this field's grid axis (its items: test_an_axis_holds_numbers)")
    r, _ = _post(url, _spec_with(field, value))
    assert r.status_code == 422, (field, value, r.text)
    assert r.json()["error"]["field"] == field, r.text


# docs/spec.md "The study spec": train.lr and train.weight_decay as lists are grid axes whose
# items are numbers like the one value they replace
@pytest.mark.parametrize("field", ["train.lr", "train.weight_decay"])
@pytest.mark.parametrize("value", [[True], ["0.1"], [None], [[0.1]], []], ids=repr)
def test_an_axis_holds_numbers(live, field, value):
    url, *_ = live
    r, _ = _post(url, _spec_with(field, value))
    assert r.status_code == 422 and r.json()["error"]["field"] == field, (value, r.text)


# docs/spec.md "The study spec": a float is never an integer (`epochs: 2.0` is 422)
@pytest.mark.parametrize("field", INTS)
def test_a_float_is_not_an_integer(live, field):
    url, *_ = live
    r, _ = _post(url, _spec_with(field, 16.0))
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


# docs/spec.md "Refused specs": values no training survives (lr above 10, batch sizes above
# 10^6) are refused
@pytest.mark.parametrize(
    "field,value",
    [
        ("train.lr", 1e308),  # finite, but no step of training survives it
        ("train.lr", 11.0),
        ("train.grad_clip", 1e300),
        ("search.batch_size.0", 10**18),
        ("seeds.0", 2**63),
        ("train.epochs", 10**9),
    ],
)
def test_values_that_cannot_run_are_refused(live, field, value):
    url, *_ = live
    r, _ = _post(url, _spec_with(field, value))
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


def _grid(n_rho: int, n_batch: int, n_seeds: int) -> dict:
    return digits_spec(
        rho=[round(0.001 * (i + 1), 6) for i in range(n_rho)],
        batch_size=list(range(1, n_batch + 1)),
        seeds=list(range(n_seeds)),
    )


# docs/api.md "The door": grids of 10^9 trials in 17 KB and lists of 100 000 values are 422 in
# milliseconds; "The study spec": a grid above SAMSWEEP_MAX_GRID_TRIALS is refused
@pytest.mark.parametrize(
    "body,field",
    [
        (_grid(1000, 1000, 1000), "search.rho"),  # 17 KB asking for 10^9 trials
        (_grid(100, 100, 100), "search"),  # 1.7 KB, 10^6 trials
        (_grid(100_000, 1, 1), "search.rho"),  # a list far past any grid
        (_grid(50, 50, 1), "search"),  # 2500 > the deployment's 2000
    ],
    ids=["1e9-trials", "1e6-trials", "100k-rho", "over-max"],
)
def test_huge_grids_are_refused_quickly(live, body, field):
    url, *_ = live
    r, seconds = _post(url, body)
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    assert seconds < SLOW, seconds


# docs/spec.md "The study spec" and docs/api.md "The door": strings are bounded and printable (no
# NUL, control, format or line-separator characters; 5 000-character names and paths)
@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "nul\x00byte"),
        ("name", "new\nline"),
        ("name", "line\u2028separator"),
        ("name", "bidi\u202eoverride"),
        ("name", "x" * 201),
        ("name", ""),
        ("dataset", {"name": "cifar10", "path": "a\x00b"}),
        ("dataset", {"name": "cifar10", "path": "x" * 5000}),
        ("dataset", {"name": "cifar10", "path": ("d/" * 600)}),
        ("dataset", {"name": "cifar10", "path": ""}),
    ],
    ids=["nul-name", "newline-name", "u2028-name", "bidi-name", "long-name", "empty-name",
         "nul-path", "5000-path", "deep-path", "empty-path"],
)  # fmt: skip
def test_hostile_strings_are_422(live, field, value):
    url, *_ = live
    r, seconds = _post(url, _spec_with(field, value))
    assert r.status_code == 422, r.text
    expected = "dataset.path" if field == "dataset" else field
    assert r.json()["error"]["field"] == expected, r.text
    assert seconds < SLOW


# docs/api.md "Errors and states" and docs/api.md "The door": malformed or too deeply nested JSON is
# 4xx
@pytest.mark.parametrize(
    "body",
    [
        "[" * 500_000,  # nesting deeper than any parser's stack, inside the body limit
        '{"a":' * 200_000 + "1" + "}" * 200_000,
        json.dumps(digits_spec()) + "x",
        b"\xff\xfe\x00garbage",
        json.dumps({**digits_spec(), "search": [[[[[[[[[[]]]]]]]]]]}),
    ],
    ids=["deep-list", "deep-object", "trailing", "binary", "nested-search"],
)
def test_malformed_and_deep_bodies_are_4xx(live, body):
    url, *_ = live
    r, seconds = _post(url, body)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()["error"]) == {"code", "message", "field", "details"}
    assert seconds < SLOW


# docs/api.md "Errors and states": an id that cannot be an id (NUL, 5 000 characters) is 404
@pytest.mark.parametrize(
    "path",
    ["%00", "x" * 5000, "%E2%98%83", "..%2F..%2Fetc", "0" * 32 + "%00", "'%20OR%201=1--"],
)
@pytest.mark.parametrize("suffix", ["", "/trials", "/best"])
def test_ids_that_cannot_be_ids_are_404(live, path, suffix):
    url, *_ = live
    r = httpx.get(f"{url}/studies/{path}{suffix}")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    r = httpx.post(f"{url}/studies/{path}/cancel")
    assert r.status_code in (404, 405), r.text


@pytest.mark.parametrize(
    "query", ["limit=true", "limit=1e3", "offset=-1", "offset=99999999999999999999", "limit=%00"]
)
def test_hostile_queries_are_422(live, query):
    url, *_ = live
    r = httpx.get(f"{url}/studies?{query}")
    assert r.status_code == 422, r.text


# docs/api.md "The door": other clients are answered meanwhile
def test_other_clients_are_answered_during_hostile_requests(live):
    """Eight 1e9-trial bodies at once; /health keeps answering meanwhile."""
    url, *_ = live
    done = threading.Event()
    codes: list[int] = []

    def attack() -> None:
        codes.append(_post(url, _grid(1000, 1000, 1000))[0].status_code)

    attackers = [threading.Thread(target=attack) for _ in range(8)]
    for t in attackers:
        t.start()
    slowest = 0.0
    while any(t.is_alive() for t in attackers):
        t0 = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        slowest = max(slowest, time.monotonic() - t0)
    for t in attackers:
        t.join()
    done.set()
    assert codes == [422] * 8 and slowest < SLOW, (codes, slowest)


# docs/api.md "The door": API memory bounded; refusals change nothing
def test_refusals_changed_nothing_and_memory_stayed_bounded(live):
    """Runs last (file order): only the one valid study exists; the API did not balloon."""
    url, d, db_url, api, rss_before = live
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM samsweep_studies")).scalar_one() == 1
        n = conn.execute(text("SELECT count(*) FROM samsweep_trials")).scalar_one()
    engine.dispose()
    assert n == httpx.get(f"{url}/studies").json()["items"][0]["n_trials"]
    assert api.memory_info().rss - rss_before < FAT, api.memory_info().rss - rss_before
    assert "Traceback" not in d.procs[0].log_path.read_text()


def _duplicated(where: str) -> str:
    """A valid spec's JSON with one key given twice: at the top level or inside search."""
    body = json.dumps(digits_spec())
    if where == "top-level":
        return body[:-1] + ', "name": "another"}'
    return body.replace('"search": {', '"search": {"rho": [0.5], ', 1)


# docs/spec.md "The study spec": a key given twice is refused (not "last wins")
@pytest.mark.parametrize("where,key", [("top-level", "name"), ("nested", "rho")])
def test_duplicate_keys_are_refused_not_last_wins(live, where, key):
    url, *_ = live
    r, _ = _post(url, _duplicated(where))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "body" and f"duplicate key '{key}'" in error["message"], error


# docs/api.md "The door": nothing about the host leaks -----------------------------------


def _raw_get(url: str, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET `path` exactly as written (httpx would normalize `..` away), optionally with
    another Host header, as an attacker's raw request would be."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/studies/", "/health/", "/studies//", "/overview/", "/docs/"])
def test_no_answer_is_built_from_the_clients_host_header(live, path):
    """Starlette's redirect_slashes answered `GET /studies/` with `Host: evil.example` by a
    307 to http://evil.example/studies: a link to any host the client names."""
    url, *_ = live
    status, headers, body = _raw_get(url, path, host="evil.example")
    assert status == 404, (status, headers)
    assert "location" not in headers
    assert b"evil.example" not in body


TRAVERSALS = [
    "/static/..%2f..%2f..%2f..%2fetc/passwd",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%5c..%5cetc%5cpasswd",
    "/static/%2fetc%2fpasswd",
    "/static//etc/passwd",
    "/static/..%2fapp.py",
    "/static/%00",
    "/static/" + "a" * 5000,
    "/docs/static/..%2f..%2f..%2f..%2fetc/passwd",
    "/docs/static/..%2f__init__.py",
    "/docs/static/index.html",  # Swagger's demo page: loads petstore.swagger.io
    "/docs/static/swagger-initializer.js",
    "/docs/static/index.j2",
    "/docs/static/swagger-ui-bundle.js.map",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_static_files_serve_their_own_files_and_nothing_else(live, path):
    url, *_ = live
    status, _, body = _raw_get(url, path)
    assert status == 404, (status, body[:200])
    assert b"root:" not in body and b"import" not in body and b"petstore" not in body


def test_the_static_files_the_pages_load_are_served(live):
    url, *_ = live
    for path in ["/static/common.js", "/static/page.css", "/docs/static/swagger-ui-bundle.js"]:
        status, _, _ = _raw_get(url, path)
        assert status == 200, path


def test_no_header_names_the_server_software(live):
    url, *_ = live
    for path in ["/health", "/studies", "/nowhere", "/static/common.js"]:
        _, headers, _ = _raw_get(url, path)
        assert "server" not in headers, (path, headers.get("server"))


OUTSIDE_PATHS = [
    "/etc",
    "/etc/passwd",
    "/root",
    "/nonexistent-samsweep",
    "/nonexistent-samsweep/deeper",
    "/proc/self/environ",
    "/proc/1/cwd",  # refused even to root in this container: was `permission denied`
    "/proc/self/root/etc",
    "/dev/null",
    "/dev/zero",
    "../../../../../../../../etc",
    "../../../../../../../../nonexistent-samsweep",
]


def test_paths_outside_the_data_root_all_get_one_refusal(live):
    """Existing, missing, unreadable, device or /proc: the same status, code, field and
    message (the message differs only by repeating the path it was given). Before, the
    answers mapped the host: `resolves outside the data root` (it exists), `no such
    file or directory`, `permission denied`."""
    url, *_ = live
    answers = set()
    for path in OUTSIDE_PATHS:
        spec = digits_spec(dataset={"name": "cifar10", "path": path})
        r, _ = _post(url, spec)
        body = r.text.replace(json.dumps(repr(path))[1:-1], "PATH")
        answers.add((r.status_code, body))
    assert len(answers) == 1, answers
    ((status, body),) = answers
    assert status == 422
    error = json.loads(body)["error"]
    assert error["field"] == "dataset.path"
    assert error["message"] == "dataset.path: PATH: not a directory under the data root", error
