"""A real samsweep API (uvicorn, `samsweep api`) on a fresh PostgreSQL database and
Redis, for the benchmarks that measure the door: `live_api()` starts it and drops the
database afterwards. Servers as for the tests (SAMSWEEP_TEST_POSTGRES / _REDIS)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from samsweep.client import ServerExited, wait_until_up

PG_ADMIN = os.environ.get(
    "SAMSWEEP_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS = os.environ.get("SAMSWEEP_TEST_REDIS", "redis://127.0.0.1:6379/0")


@dataclass
class LiveApi:
    url: str
    db_url: str
    pid: int
    log_path: Path
    queue: str
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_api(workers: int = 1, **settings: str) -> Iterator[LiveApi]:
    name = f"samsweep_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="samsweep-bench-"))
    queue = f"samsweep-bench-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMSWEEP_")}
    env.update(
        SAMSWEEP_DATABASE_URL=db_url,
        SAMSWEEP_BROKER_URL=REDIS,
        SAMSWEEP_QUEUE=queue,
        SAMSWEEP_STATE_DIR=str(tmp),
        **{"SAMSWEEP_SWEEP_SECONDS": "1"}
        | {f"SAMSWEEP_{k.upper()}": v for k, v in settings.items()},  # settings win
    )
    cli = [sys.executable, "-m", "samsweep.cli"]
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
    port = _free_port()
    log_path = tmp / "api.log"
    with open(log_path, "wb") as log:
        api = subprocess.Popen(
            [*cli, "api", "--port", str(port), "--workers", str(workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(url, timeout=60, process=api)
        except (ServerExited, TimeoutError) as e:
            raise RuntimeError(f"the API did not start ({e}): {log_path.read_text()}") from None
        yield LiveApi(url, db_url, api.pid, log_path, queue, env)
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        api.wait(timeout=30)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        import redis

        redis.Redis.from_url(REDIS).delete(queue)
        shutil.rmtree(tmp, ignore_errors=True)


def grid_spec(n_rho: int, n_batch: int, n_seeds: int, epochs: int = 20) -> dict:
    """A digits study of n_rho x n_batch x n_seeds trials (rho = 0 excluded)."""
    return {
        "name": "bench",
        "dataset": {"name": "digits"},
        "model": {"name": "cnn"},
        "search": {
            "rho": [round(0.001 * (i + 1), 6) for i in range(n_rho)],
            "batch_size": list(range(8, 8 + n_batch)),
            "base_optimizer": ["sgd"],
        },
        "train": {"epochs": epochs, "lr": 0.05},
        "seeds": list(range(n_seeds)),
    }
