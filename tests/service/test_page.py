"""The study page, the index and the plots.

In process (TestClient on the embedded default): every plot kind as SVG and PNG, the
no-complete-trials figure, the errors, escaping, private studies. Then the page driven
by a real headless Chromium (Debian's `chromium`, through Playwright) on a real uvicorn
and a real Celery worker: it loads nothing beyond loopback, shows the table and the
plots, and a trial finishing during the test appears without a reload.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from samsweep.core.db import Trial, TrialEpoch, session_factory
from samsweep.core.migrate import migrate
from samsweep.core.settings import Settings
from service.app import create_app
from service.plots import KINDS, PNG_DPI
from tests.conftest import SHARED_DATA, digits_spec

TOKENS = "alice:alice-token-0123456789,bob:bob-token-0123456789abc"


def _client(tmp: Path, **settings) -> TestClient:
    s = Settings(state_dir=tmp, data_dir=SHARED_DATA, **settings)
    migrate(s)
    return TestClient(create_app(s))


def _finish_all(client: TestClient, study_id: str, sharpness: bool = True, every: int = 1) -> None:
    """Mark every trial (every `every`-th) COMPLETE with plausible numbers (the plots'
    unit tests; the browser test below trains for real)."""
    sessions = session_factory(client.app.state.settings.resolved_database_url)
    with sessions() as session:
        trials = session.scalars(select(Trial).where(Trial.study_id == study_id)).all()
        for t in trials[::every]:
            rho, bs, seed = t.params["rho"], t.params["batch_size"], t.params["seed"]
            test = 0.9 - 0.0005 * bs + 0.2 * rho + 0.003 * seed
            t.state = "COMPLETE"
            t.value = test
            t.epoch = 2
            t.metrics = {
                "train_accuracy": test + 0.05, "test_accuracy": test, "gap": 0.05,
                "val_accuracy": None, "sharpness": 0.2 - rho if sharpness else None,
                "hessian_max_eig": None, "wall_seconds": 1.0, "passes": 10,
            }  # fmt: skip
            session.add_all(
                TrialEpoch(trial_id=t.id, epoch=e, record={
                    "epoch": e, "train_accuracy": test * e / 2 + 0.02,
                    "test_accuracy": test * e / 2, "val_accuracy": None, "train_loss": 1.0,
                    "test_loss": 1.0, "lr": 0.05})
                for e in (1, 2)
            )  # fmt: skip
        session.commit()


@pytest.fixture
def client(tmp_path):
    with _client(tmp_path) as c:
        yield c


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# README "Plots": every kind as SVG (the default) and PNG at 200 dpi, from the report and
# the trials; ?trial=N draws one trial's curves
def test_every_plot_kind_as_svg_and_png(client):
    sid = client.post("/studies", json=digits_spec(seeds=(0, 1))).json()["id"]
    _finish_all(client, sid)
    for kind in KINDS:
        svg = client.get(f"/studies/{sid}/plots/{kind}")
        assert svg.status_code == 200, (kind, svg.text)
        assert svg.headers["content-type"] == "image/svg+xml"
        # kept, but revalidated: the ETag changes with the study (tests/test_door.py)
        assert svg.headers["cache-control"] == "private, no-cache" and svg.headers["etag"]
        assert b"<svg" in svg.content[:500] and b"no complete trials" not in svg.content
        png = client.get(f"/studies/{sid}/plots/{kind}", params={"format": "png"})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        width, height = _png_size(png.content)
        assert width >= 6 * PNG_DPI and height >= 4 * PNG_DPI, (kind, width, height)
    one = client.get(f"/studies/{sid}/plots/curves", params={"trial": 3})
    assert one.status_code == 200 and b"Trial 3" in one.content  # the title, as a comment
    assert b"Best cell" in client.get(f"/studies/{sid}/plots/curves").content


# README "Plots": a study with no complete trial yet gets a figure saying so, never a 500
def test_no_complete_trials_yet_is_a_figure(client):
    sid = client.post("/studies", json=digits_spec()).json()["id"]
    for kind in KINDS:
        for fmt, ctype in (("svg", "image/svg+xml"), ("png", "image/png")):
            r = client.get(f"/studies/{sid}/plots/{kind}", params={"format": fmt})
            assert r.status_code == 200 and r.headers["content-type"] == ctype, (kind, fmt)
            if fmt == "svg":
                assert b"no complete trials yet" in r.content, kind
    r = client.get(f"/studies/{sid}/plots/curves", params={"trial": 0})  # queued: no epochs
    assert r.status_code == 200 and b"no epochs recorded yet" in r.content


# README "Plots": grids with the baseline only, SAM only, or half finished still draw
def test_plots_of_odd_and_partial_grids(client):
    for rho, every in (((0.0,), 1), ((0.05, 0.1), 1), ((0.0, 0.05, 0.1), 3)):
        spec = digits_spec(rho=rho, batch_size=(16, 64, 256))
        sid = client.post("/studies", json=spec).json()["id"]
        _finish_all(client, sid, every=every)
        for kind in KINDS:
            r = client.get(f"/studies/{sid}/plots/{kind}")
            assert r.status_code == 200 and r.content.startswith(b"<?xml"), (rho, kind)


# README "Plots": an unknown kind is a 422 naming the kinds; an unknown trial or study a 404
def test_plot_errors(client):
    sid = client.post("/studies", json=digits_spec()).json()["id"]
    r = client.get(f"/studies/{sid}/plots/violin")
    assert r.status_code == 422 and r.json()["error"]["field"] == "kind"
    assert all(k in r.json()["error"]["message"] for k in KINDS)
    assert client.get(f"/studies/{sid}/plots/rho", params={"format": "pdf"}).status_code == 422
    r = client.get(f"/studies/{sid}/plots/curves", params={"trial": 4})
    assert r.status_code == 404 and r.json()["error"]["field"] == "trial"
    assert client.get(f"/studies/{'0' * 32}/plots/rho").status_code == 404
    assert client.get(f"/studies/{'0' * 32}/page").status_code == 404
    assert client.get("/studies/not-an-id/page").status_code == 404


# README "The study page": without the sharpness measurement the plot says so
def test_sharpness_plot_without_measurements(client):
    sid = client.post("/studies", json=digits_spec()).json()["id"]
    _finish_all(client, sid, sharpness=False)
    r = client.get(f"/studies/{sid}/plots/sharpness")
    assert r.status_code == 200 and b"no sharpness measured" in r.content


# README "The study page": user text is escaped; the page loads only its own origin's
# files, under a Content-Security-Policy that forbids anything else
def test_page_escapes_and_loads_only_local_files(client):
    name = "<script>alert(1)</script> & \"'"
    sid = client.post("/studies", json=digits_spec(name=name)).json()["id"]
    for path in ("/", f"/studies/{sid}/page"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<script>alert" not in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets)
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
        assert "<script>" not in re.sub(r"<script src=\"/static/[a-z]+\.js\" defer>", "", page.text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in client.get(f"/studies/{sid}/page").text
    overview = client.get("/overview").json()
    assert overview["items"][0]["name"] == name and overview["items"][0]["best_mean"] is None
    _finish_all(client, sid)
    best = client.get(f"/studies/{sid}/best").json()["cell"]["objective"]["mean"]
    assert client.get("/overview").json()["items"][0]["best_mean"] == pytest.approx(best)


# README "The study page": with private studies the HTML holds nothing of any study; the
# page's fetches carry the token, and each owner sees only their own studies
def test_private_studies_page_holds_no_data(tmp_path):
    with _client(tmp_path, api_tokens=TOKENS, private_studies=True) as c:
        alice = {"Authorization": "Bearer alice-token-0123456789"}
        bob = {"Authorization": "Bearer bob-token-0123456789abc"}
        spec = digits_spec(name="alice-secret-study")
        sid = c.post("/studies", json=spec, headers=alice).json()["id"]
        page = c.get(f"/studies/{sid}/page")
        assert page.status_code == 200 and "alice-secret-study" not in page.text
        assert 'data-private="true"' in page.text
        # an id that does not exist looks the same: the page is no existence oracle
        other = c.get(f"/studies/{'0' * 32}/page").text
        assert other.replace("0" * 32, sid) == page.text
        assert "alice-secret-study" not in c.get("/").text
        assert c.get("/overview").status_code == 401
        assert [s["name"] for s in c.get("/overview", headers=alice).json()["items"]] == [
            "alice-secret-study"
        ]
        assert c.get("/overview", headers=bob).json()["items"] == []
        assert c.get(f"/studies/{sid}/plots/rho").status_code == 401
        assert c.get(f"/studies/{sid}/plots/rho", headers=bob).status_code == 404
        assert c.get(f"/studies/{sid}/plots/rho", headers=alice).status_code == 200


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture
def browser():
    """Debian's chromium through Playwright (never Playwright's own download). Installed by
    `make test` (scripts/browser.sh); without it the browser tests skip, or fail on CI."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed") if os.environ.get("CI") else pytest.skip(
            "playwright is not installed (pip install -e '.[dev]')"
        )
    if not os.path.exists(CHROMIUM):
        message = "chromium is not installed (bash scripts/browser.sh)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


class Guard:
    """Aborts and records every request whose host is not loopback; records the page's
    errors and console errors."""

    def __init__(self, context):
        self.remote: list[str] = []
        self.errors: list[str] = []
        context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if urlparse(url).hostname in LOOPBACK:
            route.continue_()
        else:
            self.remote.append(url)
            route.abort()

    def watch(self, page):
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        return page


def _count(page, state: str) -> str:
    return page.locator(f"#counts li[data-state={state}] .count").inner_text()


def _images_loaded(page) -> None:
    page.wait_for_function(
        """() => [...document.querySelectorAll('img[data-kind]')].every(
               i => i.dataset.loaded === 'true' && i.complete && i.naturalWidth > 0)""",
        timeout=60_000,
    )


# README "The study page": a real Chromium on a real uvicorn and Celery worker: the page
# loads nothing beyond loopback, shows the report table and the plots, and trials that
# finish while it is open appear without a reload; the index links to it
@pytest.mark.e2e
def test_study_page_live_in_a_real_browser(server_deployment, browser, tmp_path):
    d = server_deployment
    api = d.start_api()  # no worker yet: every trial stays QUEUED
    spec = digits_spec(rho=(0.0, 0.05), batch_size=(32,), epochs=2, seeds=(0, 1))
    spec["dataset"]["val_fraction"] = 0.2
    spec["objective"] = "val_accuracy"
    spec["sharpness"] = {"samples": 128, "ascent_steps": 1, "hessian_iters": 3}
    created = httpx.post(f"{api}/studies", json=spec, timeout=60)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    guard = Guard(context)
    page = guard.watch(context.new_page())
    navigations: list[str] = []
    page.on("framenavigated", lambda f: f.parent_frame is None and navigations.append(f.url))
    page.goto(f"{api}/studies/{sid}/page")
    page.wait_for_selector("body[data-updates]")
    assert page.locator("#study-name").inner_text() == "digits-test"
    assert _count(page, "QUEUED") == "4" and _count(page, "COMPLETE") == "0"
    assert page.locator("#trials tbody tr").count() == 4
    assert page.locator("#report tr.baseline").count() == 1  # counted, not dropped
    _images_loaded(page)  # the "no complete trials yet" figures
    page.screenshot(path=str(tmp_path / "study-page-queued.png"), full_page=True)

    start = time.monotonic()
    d.start_worker()
    page.wait_for_function(
        "() => document.querySelector('#counts li[data-state=COMPLETE] .count').textContent"
        " !== '0'",
        timeout=180_000,
    )
    print(f"\nfirst trial appeared on the page {time.monotonic() - start:.1f}s after the worker")
    page.wait_for_selector("#trials tbody tr.state-COMPLETE")  # the same poll's trial list
    page.wait_for_selector("body[data-status=complete][data-polling=off]", timeout=180_000)
    assert len(navigations) == 1, navigations  # the first load only: no reload
    assert _count(page, "COMPLETE") == "4" and _count(page, "QUEUED") == "0"
    assert int(page.locator("body").get_attribute("data-updates")) > 2

    # the report table: the baseline and rho 0.05 (selected, the only SAM rho), mean ± std
    rows = page.locator("#report tbody tr[data-rho]")
    assert rows.count() == 2
    selected = page.locator("#report tr.selected")
    assert selected.get_attribute("data-rho") == "0.05" and "★" in selected.inner_text()
    assert "±" in selected.inner_text()
    assert "ρ selected on val_accuracy" in page.locator("#report-note").inner_text()
    assert "SAM's gain at ρ = 0.05" in page.locator("#report tr.gain").inner_text()
    _images_loaded(page)
    sizes = page.eval_on_selector_all(
        "img[data-kind]", "imgs => imgs.map(i => [i.dataset.kind, i.naturalWidth])"
    )
    assert {k for k, w in sizes if w > 0} == set(KINDS), sizes
    page.locator("#trials tbody tr[data-number='1'] button").click()
    page.wait_for_function(
        "() => document.getElementById('curves-which').textContent === 'trial 1'"
    )
    _images_loaded(page)
    shot = tmp_path / "study-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    # the index lists it with its best cell and links to the page
    page.goto(f"{api}/")
    page.wait_for_selector("body[data-loaded=true]")
    row = page.locator(f"#studies tr[data-study-id='{sid}']")
    assert row.locator("td.status").text_content() == "complete"
    assert "(val_accuracy)" in row.locator("td.best").text_content()
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    row.locator("a").click()
    page.wait_for_url(f"{api}/studies/{sid}/page")
    page.wait_for_selector("body[data-status=complete]")

    assert guard.remote == [], guard.remote
    assert guard.errors == [], guard.errors
    for kind in KINDS:  # and straight from the real server, both formats
        for fmt, ctype in (("svg", "image/svg+xml"), ("png", "image/png")):
            r = httpx.get(f"{api}/studies/{sid}/plots/{kind}", params={"format": fmt})
            assert r.status_code == 200 and r.headers["content-type"] == ctype, (kind, fmt)
    context.close()


# README "The study page": with private studies the page asks for a token, keeps it in
# the tab's sessionStorage, sends it on every fetch (plots as blobs) and shows another
# owner's study as not found
@pytest.mark.e2e
def test_private_study_page_asks_for_a_token(deployment_factory, pg_url, redis_url, browser):
    d = deployment_factory(
        database_url=pg_url, broker_url=redis_url, queue=f"samsweep-test-{os.getpid()}",
        api_tokens=TOKENS, private_studies="true",
    )  # fmt: skip
    assert d.run("migrate").returncode == 0
    api = d.start_api()
    alice = {"Authorization": "Bearer alice-token-0123456789"}
    spec = digits_spec(name="alice-secret-study")
    sid = httpx.post(f"{api}/studies", json=spec, headers=alice, timeout=60).json()["id"]

    context = browser.new_context()
    guard = Guard(context)
    page = guard.watch(context.new_page())
    page.goto(f"{api}/studies/{sid}/page")
    page.wait_for_selector("#token-panel:not([hidden])")
    assert "alice-secret-study" not in page.content()
    page.fill("#token-input", "bob-token-0123456789abc")  # another owner: not found
    page.click("#token-form button")
    page.wait_for_function("() => document.body.dataset.polling === 'off'")
    assert page.locator("#study-name").inner_text() == "No such study (or not yours)"
    assert "alice-secret-study" not in page.content()

    page.click("#token-forget")  # forgets the token and reloads
    page.wait_for_selector("#token-panel:not([hidden])")
    page.fill("#token-input", "alice-token-0123456789")
    page.click("#token-form button")
    page.wait_for_function("() => document.getElementById('study-name').textContent !== ''")
    page.wait_for_selector("body[data-updates]")
    assert page.locator("#study-name").inner_text() == "alice-secret-study"
    assert _count(page, "QUEUED") == "4"
    _images_loaded(page)  # fetched with the token, shown from blob: URLs
    srcs = page.eval_on_selector_all("img[data-kind]", "imgs => imgs.map(i => i.src)")
    assert all(s.startswith("blob:") for s in srcs), srcs
    stored = page.evaluate("() => sessionStorage.getItem('samsweep.token')")
    assert stored == "alice-token-0123456789" and "alice-token" not in page.url
    page.goto(f"{api}/")  # the same tab keeps the token: the index lists alice's study
    page.wait_for_selector("body[data-loaded=true]")
    assert page.locator("#studies tbody tr").count() == 1
    assert guard.remote == [], guard.remote
    unexpected = [e for e in guard.errors if "status of 404" not in e]  # bob's fetch: expected
    assert unexpected == [], guard.errors
    context.close()
