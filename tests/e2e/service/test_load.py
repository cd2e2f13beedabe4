"""More concurrent readers than the database pool has connections (15) and than the
API's threadpool has threads (40), on a real uvicorn with PostgreSQL: every request is
answered, the pool never times out, and the sweeper keeps sweeping. With sessions held
by `yield` dependencies this deadlocked until the pool timed out (fastapi#3205); see
service/api/deps.py. Not a timed test: latencies are in benchmarks/load.py."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import redis
from sqlalchemy import create_engine, text

from tests.support.db import REDIS
from tests.support.http import wait_for
from tests.support.specs import digits_spec

CLIENTS = 200


async def _burst(url: str, paths: list[str]) -> list[int]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        responses = await asyncio.gather(*(client.get(p) for p in paths))
    return [r.status_code for r in responses]


# docs/api.md "The door": 200 concurrent readers, more than the pool's connections and the
# threadpool's threads: all answered, the sweeper keeps sweeping
def test_more_concurrent_readers_than_connections_are_all_answered(deployment_factory, pg_url):
    d = deployment_factory(
        database_url=pg_url, broker_url=REDIS, queue=f"samsweep-test-{uuid.uuid4().hex[:8]}"
    )
    assert d.run("migrate").returncode == 0
    url = d.start_api()
    spec = digits_spec(rho=[0.01 * i for i in range(10)], batch_size=range(8, 18), seeds=range(10))
    r = httpx.post(f"{url}/studies", json=spec, timeout=60)
    assert r.status_code == 201 and r.json()["n_trials"] == 1000, r.text
    sid = r.json()["id"]
    paths = [
        f"/studies/{sid}",
        f"/studies/{sid}/best",
        f"/studies/{sid}/trials?limit=100&curves=false",
        "/studies",
    ]
    codes = asyncio.run(_burst(url, [paths[i % len(paths)] for i in range(CLIENTS)]))
    assert codes == [200] * CLIENTS, sorted(set(codes))

    # The sweeper shares the pool: a trial handed back as never sent reaches the broker.
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE samsweep_trials SET enqueued_at = NULL WHERE number = 0"))

    def sent_at():
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT enqueued_at FROM samsweep_trials WHERE number = 0")
            ).scalar_one()

    wait_for(sent_at, 30, d, "the sweeper to send the trial")
    engine.dispose()
    redis.Redis.from_url(REDIS).delete(d.env["SAMSWEEP_QUEUE"])
    log = d.procs[0].log_path.read_text()
    assert "QueuePool limit" not in log and "sweep failed" not in log, log[-3000:]
