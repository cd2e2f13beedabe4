"""The data root end to end: a crafted pickle executes in no process (not the API, not
the worker) and nothing outside the root is read, on a real API and worker with
PostgreSQL and Redis. (The rules themselves, in process: tests/core/test_data_root.py.)"""

from __future__ import annotations

import shutil
import time
import uuid

import httpx
import pytest

from samsweep.core.admission import NOT_A_DIRECTORY, NOT_A_FILE
from tests.support.datasets import BATCHES, SUBSET, crafted_batch, needs_subset
from tests.support.db import trial_rows
from tests.support.http import wait_study
from tests.support.specs import digits_spec

# -- end to end: real API, real worker, PostgreSQL, Redis ---------------------


def _real_spec(path: str) -> dict:
    return digits_spec(
        name="data-root",
        dataset={"name": "cifar10", "path": path},
        rho=(0.0,),
        batch_size=(256,),
        epochs=1,
    )


@pytest.fixture
def data_root_deployment(deployment_factory, pg_url, redis_url, tmp_path):
    """server_deployment, with SAMSWEEP_DATA_DIR at a temp data root of our own."""
    root = tmp_path / "data-root"
    root.mkdir()
    d = deployment_factory(
        database_url=pg_url,
        broker_url=redis_url,
        queue=f"samsweep-test-{uuid.uuid4().hex[:8]}",
        data_dir=str(root),
    )
    result = d.run("migrate")
    assert result.returncode == 0, result.stderr
    return d, root, pg_url


# docs/api.md "The door": a crafted pickle must not execute in any process
@needs_subset
def test_no_process_runs_a_crafted_pickle_or_reads_outside_the_root(data_root_deployment, tmp_path):
    d, root, db_url = data_root_deployment
    marker = tmp_path / "marker-outside-the-root"
    shutil.copytree(SUBSET, root / "crafted" / BATCHES)
    (root / "crafted" / BATCHES / "data_batch_1").write_bytes(crafted_batch(marker))
    shutil.copytree(SUBSET, root / "swapped" / BATCHES)
    (root / "leaky").mkdir()  # a real directory whose batches dir is the outside copy
    (root / "leaky" / BATCHES).symlink_to(SUBSET)
    shutil.copytree(SUBSET, root / "truncated" / BATCHES)
    truncated = root / "truncated" / BATCHES / "data_batch_2"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    api = d.start_api()

    def post(path: str) -> httpx.Response:
        return httpx.post(f"{api}/studies", json=_real_spec(path), timeout=30)

    # Refused at the door, 422 naming the field: the leak, the truncated file, and
    # hostile strings (whichever of the spec or the catalog refuses them first).
    for path, says in [
        ("leaky", f"{BATCHES}: {NOT_A_DIRECTORY}"),
        ("truncated", "data_batch_2 is not a complete pickle"),
        ("good\x00", ""),
        ("a" * 5000, ""),
        ("../../etc", ""),
    ]:
        r = post(path)
        assert r.status_code == 422, (path[:20], r.text)
        error = r.json()["error"]
        assert error["field"] == "dataset.path" and says in error["message"], error
    # Accepted: a complete pickle (the API parsed it and ran nothing) ...
    crafted = post("crafted")
    assert crafted.status_code == 201, crafted.text
    # ... and a good directory whose data_batch_1 becomes an escaping symlink later.
    swapped = post("swapped")
    assert swapped.status_code == 201, swapped.text
    link = root / "swapped" / BATCHES / "data_batch_1"
    link.unlink()
    link.symlink_to(SUBSET / "data_batch_1")
    assert not marker.exists()

    d.start_worker()
    for study, says in [(crafted, "refused global posix.system"), (swapped, NOT_A_FILE)]:
        wait_study(api, study.json()["id"], timeout=180, d=d)
        (row,) = trial_rows(db_url, study.json()["id"])
        assert row["state"] == "FAILED", (row, d.logs())
        assert "data_batch_1" in row["error"] and says in row["error"], row["error"]
        assert str(root) not in row["error"] and str(SUBSET) not in row["error"], row["error"]
    time.sleep(1)  # on purpose: a late run of the pickle would show within this second
    assert not marker.exists(), d.logs()
