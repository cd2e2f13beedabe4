"""The study page driven by a real headless Chromium (Debian's `chromium`, through
Playwright) on a real uvicorn and a real Celery worker: it loads nothing beyond loopback,
shows the table and the plots, and a trial finishing during the test appears without a
reload. (The page, the index and the plots in process: tests/service/test_page.py.)
"""

from __future__ import annotations

import os
import shutil
import time
from urllib.parse import urlparse

import httpx
import pytest

from service.plots import KINDS
from tests.support.specs import digits_spec

TOKENS = "alice:alice-token-0123456789,bob:bob-token-0123456789abc"


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


# docs/report.md "The study page and the index": a real Chromium on a real uvicorn and Celery
# worker: the page loads nothing beyond loopback, shows the report table and the plots, and trials
# that finish while it is open appear without a reload; the index links to it
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
    page.wait_for_selector("body[data-status=complete][data-polling=idle]", timeout=180_000)
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

    # docs/report.md "The study page and the index": a study that grows shows its new trials
    # on the open page, without a reload, and runs them
    grown = httpx.patch(f"{api}/studies/{sid}", json={"seeds": [0, 1, 2]}, timeout=60)
    assert grown.status_code == 200 and grown.json()["added"] == 2, grown.text
    page.wait_for_function(
        "() => document.querySelectorAll('#trials tbody tr').length === 6", timeout=60_000
    )
    page.wait_for_selector("body[data-status=complete]", timeout=180_000)
    page.wait_for_function(
        "() => document.querySelector('#counts li[data-state=COMPLETE] .count').textContent"
        " === '6'",
        timeout=60_000,
    )

    assert guard.remote == [], guard.remote
    assert guard.errors == [], guard.errors
    for kind in KINDS:  # and straight from the real server, both formats
        for fmt, ctype in (("svg", "image/svg+xml"), ("png", "image/png")):
            r = httpx.get(f"{api}/studies/{sid}/plots/{kind}", params={"format": fmt})
            assert r.status_code == 200 and r.headers["content-type"] == ctype, (kind, fmt)
    context.close()


# docs/credentials.md "Tokens on the page": with private studies the page asks for a token, keeps it
# in the tab's sessionStorage, sends it on every fetch (plots as blobs) and shows another owner's
# study as not found
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
