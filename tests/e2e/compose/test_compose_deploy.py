"""`docker compose up`, without a Docker engine: docker-compose.yml is read as data and
every service is run as tests/support/compose_emulator.py describes (its docstring maps each
compose feature): each service's command as a local process with that service's
environment and only its declared volumes (temp directories; a path with no volume is
the container's own, unshared, empty layer), service hostnames as 127.0.0.1, the
postgres and redis images as a fresh database and a dedicated index of the local
servers, published ports where compose would publish them.

Two things differ from a GPU host, on top of the file, and nothing else does:
- no GPU here: the emulated host has two fake GPUs, which the worker (reserving
  `count: all`) sees through an `nvidia-smi` that lists them, and trains on the CPU:
  SAMSWEEP_DEVICE=cpu and SAMSWEEP_TORCH_THREADS=1 in place of SAMSWEEP_DEVICE=cuda;
- speed-ups, added only where the file sets nothing: a heartbeat and a sweep every
  second, a trial lost after 4 s without a heartbeat (SPEEDUPS).

The compose variables come from DOTENV, as a user's .env would hold them. Set
SAMSWEEP_TEST_COMPOSE_FILE to run the same test on another compose file.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import optuna
import pytest
import yaml

from samsweep.core.settings import Settings
from tests.support.compose_emulator import Container, Emulation
from tests.support.db import PG_ADMIN, REDIS, require
from tests.support.http import wait_for
from tests.support.paths import ROOT, SHARED_DATA
from tests.support.specs import digits_spec

COMPOSE_FILE = Path(os.environ.get("SAMSWEEP_TEST_COMPOSE_FILE") or ROOT / "docker-compose.yml")
TOKEN = "alice-compose-" + secrets.token_hex(12)
DOTENV = {
    "POSTGRES_PASSWORD": "pw-" + secrets.token_hex(8),
    "SAMSWEEP_DASHBOARD_DB_PASSWORD": "dash-" + secrets.token_hex(8),
    "SAMSWEEP_API_TOKENS": f"alice:{TOKEN}",
    "SAMSWEEP_PRIVATE_STUDIES": "true",
    "SAMSWEEP_DATA_HOST_DIR": str(SHARED_DATA),  # holds cifar10-subset/
}
SPEEDUPS = {
    "SAMSWEEP_HEARTBEAT_SECONDS": "1",
    "SAMSWEEP_SWEEP_SECONDS": "1",
    "SAMSWEEP_STALE_SECONDS": "4",
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DATASET = {"name": "cifar10", "path": "cifar10-subset"}  # relative to the data volume


def cifar_spec(name: str, rho: tuple[float, ...], epochs: int) -> dict:
    return digits_spec(
        rho=rho, batch_size=(256,), epochs=epochs, seeds=(0,), name=name, dataset=DATASET
    )


@pytest.fixture
def emulate(tmp_path: Path) -> Iterator[Callable[..., Emulation]]:
    """Start an emulated compose project (the file, or a modified copy of it)."""
    require("127.0.0.1", 5432, "PostgreSQL")
    require("127.0.0.1", 6379, "Redis")
    if not (SHARED_DATA / DATASET["path"]).is_dir():
        pytest.skip(f"no CIFAR-10 subset at {SHARED_DATA / DATASET['path']}")
    made: list[Emulation] = []

    def make(raw: dict | None = None) -> Emulation:
        emu = Emulation(
            COMPOSE_FILE,
            DOTENV,
            tmp_path / f"project-{len(made)}",
            project_dir=ROOT,
            admin_postgres=PG_ADMIN,
            admin_redis=REDIS,
            extra_env=SPEEDUPS,
            raw=raw,
        )
        made.append(emu)
        return emu

    yield make
    for emu in made:  # every process group, then the database and the Redis index
        emu.close()


def trials(api: str, study: str) -> list[dict]:
    r = httpx.get(f"{api}/studies/{study}/trials?curves=true", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["trials"]


def wait_complete(api: str, study: str, emu: Emulation, timeout: float) -> list[dict]:
    def finished() -> bool:
        r = httpx.get(f"{api}/studies/{study}", headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["status"] in ("complete", "cancelled")

    wait_for(finished, timeout, emu, f"study {study} to finish")
    ts = trials(api, study)
    assert [t["state"] for t in ts] == ["COMPLETE"] * len(ts), (ts, emu.logs())
    return ts


def checkpoint_dir(c: Container) -> Path:
    """Where this worker container's checkpoints are, on the host."""
    fields = {
        k.removeprefix("SAMSWEEP_").lower(): v
        for k, v in c.env.items()
        if k.startswith("SAMSWEEP_")
    }
    path = Settings(_env_file=None, **fields).resolved_checkpoint_dir
    return path if path.is_absolute() else c.cwd / path


# docs/deploy.md "How the compose file is tested": the emulated compose: tokens reach the API (401
# without), a CIFAR-10 study trains, a SIGKILLed worker is resumed from the checkpoint volume, the
# dashboard answers on 127.0.0.1 only, nothing is written into the read-only data mount
def test_compose_up_trains_cifar_resumes_a_killed_worker_and_keeps_the_dashboard_local(
    emulate,
):
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    emu = emulate()
    emu.up("api", "worker", "dashboard")
    emu.wait_for("api", "service_healthy", timeout=90)  # its own healthcheck
    timings["up (migrate, api healthy, worker, dashboard)"] = time.monotonic() - t0
    api = emu.url("api", 8000)

    # The tokens in .env reached the API: without one, writes and (private) reads are 401.
    spec = cifar_spec("compose-cifar", rho=(0.0, 0.05), epochs=1)
    assert httpx.post(f"{api}/studies", json=spec, timeout=60).status_code == 401
    assert httpx.get(f"{api}/studies", timeout=30).status_code == 401
    # The API sees the data volume: it checks the CIFAR files before accepting the study.
    r = httpx.post(f"{api}/studies", json=spec, headers=AUTH, timeout=60)
    assert r.status_code == 201, f"{r.text}\n{emu.logs()}"
    first = r.json()["id"]
    t = time.monotonic()
    for trial in wait_complete(api, first, emu, timeout=420):
        assert trial["metrics"]["epochs"] == 1 and trial["metrics"]["device"] == "cpu"
    # `count: all` reserved the host's two (emulated) GPUs: one slot each, each slot's
    # process pinned to its own (docs/deploy.md "Slots")
    log = emu.current("worker").log_path.read_text()
    assert "2 slot(s) on GPU 0, 1" in log, log[-3000:]
    assert "pinned to GPU 0" in log and "pinned to GPU 1" in log, log[-3000:]
    timings["CIFAR study, 2 trials x 1 epoch"] = time.monotonic() - t

    # A worker container killed mid-trial; a new container of the service (a fresh
    # writable layer, the same volumes) resumes the trial from its last checkpoint.
    r = httpx.post(
        f"{api}/studies", json=cifar_spec("compose-resume", (0.0,), 3), headers=AUTH, timeout=60
    )
    assert r.status_code == 201, r.text
    second = r.json()["id"]
    t = time.monotonic()
    wait_for(
        lambda: any(x["state"] == "RUNNING" and x["epoch"] >= 1 for x in trials(api, second)),
        300,
        emu,
        "the first epoch to be recorded",
    )
    killed = emu.current("worker")
    emu.kill("worker")  # SIGKILL to its process group: the worker and its pool child
    assert list(checkpoint_dir(killed).rglob("*.pt")), "no checkpoint where the worker wrote"
    timings["resume study: first epoch, then SIGKILL"] = time.monotonic() - t
    t = time.monotonic()
    restarted = emu.start("worker")
    assert restarted.root != killed.root
    (trial,) = wait_complete(api, second, emu, timeout=420)
    timings["restarted worker: re-queued, resumed, complete"] = time.monotonic() - t
    assert trial["attempts"] >= 2, trial
    assert (trial["metrics"]["resumed_from_epoch"] or 0) >= 1, (trial["metrics"], emu.logs())
    assert [c["epoch"] for c in trial["curves"]] == [1, 2, 3]
    assert not list(checkpoint_dir(restarted).rglob("*.pt"))  # cleaned up when recorded

    # optuna-dashboard answers on the host's loopback and shows the workers' storage...
    ip, port = emu.listen_address("dashboard", 8080)
    assert ip == "127.0.0.1"
    r = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=30)
    assert r.status_code == 200, r.text
    shown = {s["study_name"] for s in r.json()["study_summaries"]}
    storage = emu.current("dashboard").argv[-1]
    assert shown == set(optuna.get_all_study_names(storage)) and len(shown) == 2
    # ...as a read-only role: its DELETE cannot remove a study
    study_id = r.json()["study_summaries"][0]["study_id"]
    r = httpx.delete(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=30)
    assert r.status_code >= 400 and set(optuna.get_all_study_names(storage)) == shown
    # ...private studies included, so nothing outside loopback reaches it, while the
    # API, published on every interface, does answer there (the positive control)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.2:{port}/api/studies", timeout=5)
    _, api_port = emu.listen_address("api", 8000)
    assert httpx.get(f"http://127.0.0.2:{api_port}/health", timeout=10).status_code == 200

    emu.assert_read_only_mounts_untouched()
    timings["total"] = time.monotonic() - t0
    print("\n[compose emulation] " + "; ".join(f"{k}: {v:.1f}s" for k, v in timings.items()))


# docs/deploy.md "How the compose file is tested": on the file as it was before, the emulation fails
def test_the_emulation_catches_finding_7(emulate):
    """The file before the fix, as far as the API and the dashboard go: the API with no
    data volume and no tokens, the dashboard on every interface. Each defect shows."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    api = raw["services"]["api"]
    api.pop("volumes")
    for key in ("SAMSWEEP_API_TOKENS", "SAMSWEEP_PRIVATE_STUDIES"):
        api["environment"].pop(key)
    raw["services"]["dashboard"]["ports"] = ["${SAMSWEEP_DASHBOARD_PORT:-8080}:8080"]
    emu = emulate(raw)
    emu.up("api", "dashboard")
    emu.wait_for("api", "service_healthy", timeout=90)
    url = emu.url("api", 8000)

    # the data root is the API container's own empty /data: every CIFAR study refused
    r = httpx.post(f"{url}/studies", json=cifar_spec("c", (0.0,), 1), headers=AUTH, timeout=60)
    assert r.status_code == 422 and "dataset.path" in r.text, r.text
    # the tokens in .env never reached it: it is open
    r = httpx.post(f"{url}/studies", json=digits_spec(epochs=1), timeout=60)
    assert r.status_code == 201, r.text
    # the dashboard answers from outside loopback
    _, port = emu.listen_address("dashboard", 8080)
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/api/studies"), 60, emu, "the dashboard")
    assert _answers(f"http://127.0.0.2:{port}/api/studies")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
