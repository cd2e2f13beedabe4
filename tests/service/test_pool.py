"""In process: 503 (never 500) while the database connection pool stays busy for its
whole timeout. (The rest of the API's behaviour on a real uvicorn:
tests/e2e/service/test_api.py.)"""

from __future__ import annotations

from tests.support.db import REDIS
from tests.support.specs import digits_spec


# docs/api.md "Errors and states": a pool that stayed busy for its whole timeout is 503 with
# Retry-After, never 500 (in process: the pool's size and timeout are not settings, so the
# test makes them one connection and half a second, and holds that connection itself)
def test_a_pool_busy_for_its_whole_timeout_is_503(pg_url, monkeypatch):
    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine

    from samsweep.core import db
    from samsweep.core.migrate import migrate
    from samsweep.core.settings import Settings
    from service.app import create_app

    settings = Settings(database_url=pg_url, broker_url=REDIS)
    migrate(settings)
    monkeypatch.setattr(
        db,
        "make_engine",
        lambda url: create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.5),
    )
    db.engine_for.cache_clear()
    db.session_factory.cache_clear()
    try:
        # no lifespan (no sweeper takes the connection); a handler missing answers 500 here
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        assert client.get("/studies").status_code == 200  # the pool works
        with db.engine_for(pg_url).connect():  # every pooled connection busy
            for r in (client.get("/studies"), client.post("/studies", json=digits_spec())):
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "database_unavailable"
                assert r.headers["retry-after"] == "5"
        assert client.get("/studies").status_code == 200  # and it recovers
    finally:
        db.engine_for.cache_clear()
        db.session_factory.cache_clear()
