"""Fixtures that talk to real servers: PostgreSQL and Redis on this machine, and the
API and workers as real subprocesses (uvicorn, Celery), as in production.

Each test gets a fresh PostgreSQL database and its own Redis queue name, so tests
never see each other's rows or messages. Server addresses come from
SAMSWEEP_TEST_POSTGRES (an admin URL) and SAMSWEEP_TEST_REDIS.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_ADMIN = os.environ.get(
    "SAMSWEEP_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS = os.environ.get("SAMSWEEP_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _require(host: str, port: int, what: str) -> None:
    if not _reachable(host, port):
        message = f"{what} is not reachable at {host}:{port}"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run these tests, never skip them
        pytest.skip(message)


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    _require("127.0.0.1", 5432, "PostgreSQL")
    name = f"samsweep_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        from samsweep.core.db import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    _require("127.0.0.1", 6379, "Redis")
    return REDIS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Deployment:
    """Environment for one samsweep deployment, and the processes started for it."""

    env: dict[str, str]
    tmp: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    api_url: str | None = None

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "samsweep.cli", *args],
            env=self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, name: str, *args: str, memory_limit: int | None = None) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "ab") as log:  # the child keeps its own fd
            proc = subprocess.Popen(
                [sys.executable, "-m", "samsweep.cli", *args],
                env=self.env,
                cwd=self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so a test can signal the whole process group
                preexec_fn=None if memory_limit is None else _limit_memory(memory_limit),
            )
        proc.log_path = self.tmp / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def start_api(self) -> str:
        port = free_port()
        proc = self.spawn("api", "api", "--port", str(port))
        self.api_url = f"http://127.0.0.1:{port}"
        wait_healthy(self.api_url, proc)
        return self.api_url

    def start_worker(
        self, name: str = "worker", *extra: str, memory_limit: int | None = None
    ) -> subprocess.Popen:
        return self.spawn(name, "worker", *extra, memory_limit=memory_limit)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_path.read_text()[-4000:]}"  # type: ignore[attr-defined]
            for p in self.procs
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _limit_memory(limit: int):
    """An address-space limit for a child (and its children): real allocation failures."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    from samsweep.client import ServerExited, wait_until_up

    try:
        wait_until_up(url, timeout, process=proc)
    except ServerExited as e:
        raise RuntimeError(f"{e}: {proc.log_path.read_text()}") from None  # type: ignore[attr-defined]


def base_env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMSWEEP_")}
    env.update(
        PYTHONUNBUFFERED="1",
        SAMSWEEP_STATE_DIR=str(tmp / "state"),
        SAMSWEEP_DATA_DIR=str(SHARED_DATA),
        SAMSWEEP_SWEEP_SECONDS="1",
        SAMSWEEP_HEARTBEAT_SECONDS="1",
        SAMSWEEP_DEVICE="cpu",
        SAMSWEEP_TORCH_THREADS="1",
    )
    env.update({f"SAMSWEEP_{k.upper()}": v for k, v in settings.items()})
    return env


@pytest.fixture
def deployment_factory(tmp_path: Path) -> Iterator:
    made: list[Deployment] = []

    def make(**settings: str) -> Deployment:
        d = Deployment(env=base_env(tmp_path, **settings), tmp=tmp_path)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def server_deployment(deployment_factory, pg_url: str, redis_url: str) -> Deployment:
    """PostgreSQL + Redis, migrated; start the API and workers in the test."""
    d = deployment_factory(
        database_url=pg_url, broker_url=redis_url, queue=f"samsweep-test-{uuid.uuid4().hex[:8]}"
    )
    result = d.run("migrate")
    assert result.returncode == 0, result.stderr
    return d


def trial_rows(db_url: str, study_id: str) -> list[dict]:
    """The study's trial rows read straight from the database (not through the API)."""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM samsweep_trials WHERE study_id = :s ORDER BY id"),
            {"s": study_id},
        ).mappings()
        result = [dict(r) for r in rows]
    engine.dispose()
    return result


def wait_for(
    cond: Callable[[], object],
    timeout: float,
    source,
    what: str,
    poll: float = 0.2,
    process: subprocess.Popen | None = None,
    ignore: tuple[type[Exception], ...] = (),
):
    """The tests' one wait: poll `cond` until it returns something truthy (returned).
    Fails the test with `source.logs()` (a Deployment, a compose Emulation) on timeout,
    or at once if `process` exits first; exceptions in `ignore` count as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(
                f"{process.args} exited with {process.returncode} waiting for {what}\n"
                f"{source.logs()}"
            )
        try:
            if value := cond():
                return value
        except ignore:
            pass
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{source.logs()}")


class _NoLogs:
    def logs(self) -> str:
        return ""


def wait_study(api: str, study_id: str, timeout: float = 240, d: Deployment | None = None) -> dict:
    """Poll the study until it is complete or cancelled; its detail."""

    def finished() -> dict | None:
        detail = httpx.get(f"{api}/studies/{study_id}", timeout=10).json()
        return detail if detail["status"] in ("complete", "cancelled") else None

    return wait_for(finished, timeout, d or _NoLogs(), f"study {study_id} to finish", poll=0.5)


def digits_spec(rho=(0.0, 0.05), batch_size=(16, 64), epochs=2, seeds=(0,), **extra) -> dict:
    spec = {
        "name": "digits-test",
        "dataset": {"name": "digits"},
        "model": {"name": "cnn"},
        "search": {"rho": list(rho), "batch_size": list(batch_size), "base_optimizer": ["sgd"]},
        "train": {"epochs": epochs, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "seeds": list(seeds),
        "objective": "test_accuracy",
        "sharpness": {"samples": 0},  # ~2 s per trial on a CPU; tests that check it turn it on
    }
    spec.update(extra)
    return spec


@pytest.fixture(autouse=True)
def _no_settings_leak(monkeypatch):
    """In-process code under test reads settings the tests pass explicitly."""
    for k in list(os.environ):
        if k.startswith("SAMSWEEP_") and not k.startswith("SAMSWEEP_TEST_"):
            monkeypatch.delenv(k)
    from samsweep.core.settings import get_settings

    get_settings.cache_clear()


@dataclass
class FinishedStudy:
    """A study that really ran, on an API and a worker kept for the whole test session."""

    deployment: Deployment
    api: str
    study_id: str
    spec: dict


# ρ 0 and 0.05 at two batch sizes, two seeds (paired gains have an interval), a validation
# split (ρ is selected on it): 8 tiny trainings, a few seconds each on a CPU.
FINISHED_SPEC = digits_spec(
    batch_size=(32, 128),
    seeds=(0, 1),
    dataset={"name": "digits", "val_fraction": 0.2},
    objective="val_accuracy",
)


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory) -> Iterator[FinishedStudy]:
    """PostgreSQL + Redis, the API and one worker, and FINISHED_SPEC run to completion:
    shared by the CLI and client tests that only read (tests/test_cli_studies.py,
    tests/test_client.py)."""
    _require("127.0.0.1", 6379, "Redis")
    tmp = tmp_path_factory.mktemp("finished")
    with fresh_pg_database() as db_url:
        env = base_env(
            tmp,
            database_url=db_url,
            broker_url=REDIS,
            queue=f"samsweep-test-{uuid.uuid4().hex[:8]}",
        )
        d = Deployment(env=env, tmp=tmp)
        try:
            result = d.run("migrate")
            assert result.returncode == 0, result.stderr
            api = d.start_api()
            d.start_worker()
            created = httpx.post(f"{api}/studies", json=FINISHED_SPEC, timeout=30).json()
            wait_study(api, created["id"], d=d)
            yield FinishedStudy(d, api, created["id"], FINISHED_SPEC)
        finally:
            d.stop()
