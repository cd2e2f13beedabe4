"""The study page, the index and the plots, in process (TestClient on the embedded
default): every plot kind as SVG and PNG, the no-complete-trials figure, the errors,
escaping, private studies. (The page in a real browser:
tests/e2e/browser/test_study_page.py.)
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from samsweep.core.db import Trial, TrialEpoch, session_factory
from samsweep.core.migrate import migrate
from samsweep.core.settings import Settings
from service.app import create_app
from service.plots import KINDS, PNG_DPI
from tests.support.paths import SHARED_DATA
from tests.support.specs import digits_spec

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


# docs/report.md "Plots": every kind as SVG (the default) and PNG at 200 dpi, from the report and
# the trials; ?trial=N draws one trial's curves
def test_every_plot_kind_as_svg_and_png(client):
    sid = client.post("/studies", json=digits_spec(seeds=(0, 1))).json()["id"]
    _finish_all(client, sid)
    for kind in KINDS:
        svg = client.get(f"/studies/{sid}/plots/{kind}")
        assert svg.status_code == 200, (kind, svg.text)
        assert svg.headers["content-type"] == "image/svg+xml"
        # kept, but revalidated: the ETag changes with the study (tests/e2e/service/test_door.py)
        assert svg.headers["cache-control"] == "private, no-cache" and svg.headers["etag"]
        assert b"<svg" in svg.content[:500] and b"no complete trials" not in svg.content
        png = client.get(f"/studies/{sid}/plots/{kind}", params={"format": "png"})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        width, height = _png_size(png.content)
        assert width >= 6 * PNG_DPI and height >= 4 * PNG_DPI, (kind, width, height)
    one = client.get(f"/studies/{sid}/plots/curves", params={"trial": 3})
    assert one.status_code == 200 and b"Trial 3" in one.content  # the title, as a comment
    assert b"Best cell" in client.get(f"/studies/{sid}/plots/curves").content


# docs/report.md "Plots": a study with no complete trial yet gets a figure saying so, never a 500
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


# docs/report.md "Plots": grids with the baseline only, SAM only, or half finished still draw
def test_plots_of_odd_and_partial_grids(client):
    for rho, every in (((0.0,), 1), ((0.05, 0.1), 1), ((0.0, 0.05, 0.1), 3)):
        spec = digits_spec(rho=rho, batch_size=(16, 64, 256))
        sid = client.post("/studies", json=spec).json()["id"]
        _finish_all(client, sid, every=every)
        for kind in KINDS:
            r = client.get(f"/studies/{sid}/plots/{kind}")
            assert r.status_code == 200 and r.content.startswith(b"<?xml"), (rho, kind)


# docs/report.md "Plots": an unknown kind is a 422 naming the kinds; an unknown trial or study a 404
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


# docs/report.md "The study page and the index": without the sharpness measurement the plot says so
def test_sharpness_plot_without_measurements(client):
    sid = client.post("/studies", json=digits_spec()).json()["id"]
    _finish_all(client, sid, sharpness=False)
    r = client.get(f"/studies/{sid}/plots/sharpness")
    assert r.status_code == 200 and b"no sharpness measured" in r.content


# docs/report.md "The study page and the index": user text is escaped; the page loads only its own
# origin's files, under a Content-Security-Policy that forbids anything else
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


# docs/credentials.md "Tokens on the page": with private studies the HTML holds nothing of any
# study; the page's fetches carry the token, and each owner sees only their own studies
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
