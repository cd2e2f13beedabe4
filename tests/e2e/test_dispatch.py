"""The dispatcher on real parts (the API, real Celery workers), on the embedded default
and on PostgreSQL + Redis: a study posted later is served at the next free place, the
broker holds only the window, max_concurrent_trials holds with two workers, and a trial
whose message a consumer took and died with is trained all the same."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import redis

from tests.support.http import free_port, wait_for, wait_study
from tests.support.processes import wait_healthy
from tests.support.specs import digits_spec


def _trials(api: str, study: str) -> list[dict]:
    return httpx.get(f"{api}/studies/{study}/trials", params={"limit": 1000}).json()["trials"]


def _queued_in_broker(d) -> int | None:
    url = d.env.get("SAMSWEEP_BROKER_URL")
    if url is None:
        return None
    r = redis.Redis.from_url(url)
    try:
        return r.llen(d.env["SAMSWEEP_QUEUE"])
    finally:
        r.close()


# docs/api.md "The dispatcher": study B (2 trials) posted after study A (12 trials), one
# worker: B finishes while most of A is still queued; the broker never holds more than
# the window (2 with one trial running)
def test_a_small_study_posted_later_finishes_first(deployment):
    d = deployment
    api = d.start_api()
    a = httpx.post(f"{api}/studies", json=digits_spec(rho=(0.0, 0.05), batch_size=(16, 32),
                                                      seeds=(0, 1, 2))).json()  # fmt: skip
    b = httpx.post(f"{api}/studies", json=digits_spec(rho=(0.0,), batch_size=(16, 32))).json()
    assert (a["n_trials"], b["n_trials"]) == (12, 2)
    d.start_worker()
    most = 0

    def b_done():
        nonlocal most
        in_broker = _queued_in_broker(d)
        most = max(most, in_broker or 0)
        if httpx.get(f"{api}/studies/{b['id']}").json()["status"] == "complete":
            return True
        return None

    wait_for(b_done, 240, d, "study B to finish")
    a_states = [t["state"] for t in _trials(api, a["id"])]
    assert a_states.count("COMPLETE") <= 4 and a_states.count("QUEUED") >= 7, a_states
    assert most <= 2  # the window: never the whole study
    wait_study(api, a["id"], timeout=300, d=d)


# docs/spec.md "The study spec": max_concurrent_trials: never more of the study's trials
# running at once, whatever the number of workers
def test_max_concurrent_trials_holds_with_two_workers(server_deployment):
    d = server_deployment
    api = d.start_api()
    spec = digits_spec(rho=(0.0, 0.05), batch_size=(16, 32), max_concurrent_trials=1)
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    d.start_worker("worker-1")
    d.start_worker("worker-2")
    most = 0
    while True:
        counts = httpx.get(f"{api}/studies/{study}").json()["counts"]
        most = max(most, counts["RUNNING"])
        if counts["COMPLETE"] == 4:
            break
        assert "Traceback" not in d.logs(), d.logs()
        time.sleep(0.1)
    assert most == 1


# docs/faults.md "The fault contract": a worker killed between receiving a trial's message and
# claiming the trial: the trial is sent again after SAMSWEEP_UNCLAIMED_SECONDS and trained
# (on Redis the message would wait for the visibility timeout; on the embedded broker,
# forever); and its sibling, a message acknowledged but never run (a consumer that acks
# early and exits)
@pytest.mark.parametrize("how", ["unacked-killed", "acked-never-run"])
def test_a_message_taken_by_a_consumer_that_died_is_not_lost(deployment, how):
    d = deployment
    d.env["SAMSWEEP_UNCLAIMED_SECONDS"] = "3"
    api = d.start_api()
    study = httpx.post(f"{api}/studies", json=digits_spec(rho=(0.0,), batch_size=(16,))).json()
    sid = study["id"]
    # a consumer takes the trial's message without acknowledging it, then dies (SIGKILL:
    # nothing restores the message), exactly as a worker killed before its claim
    take = (
        "import os, sys\n"
        "from samsweep.core.queue import make_celery\n"
        "from samsweep.core.settings import Settings\n"
        "s = Settings()\n"
        "app = make_celery(s)\n"
        "conn = app.connection_for_write()\n"
        f"message = conn.default_channel.basic_get(s.queue, no_ack={how == 'acked-never-run'})\n"
        "if message is None: sys.exit(3)\n"
        + ("os.kill(os.getpid(), 9)\n" if how == "unacked-killed" else "sys.exit(0)\n")
    )

    def taken():
        done = subprocess.run([sys.executable, "-c", take], env=d.env, cwd=d.tmp, timeout=60)
        return done.returncode in (-9, 0) or None  # 3: not sent yet, try again

    wait_for(taken, 60, d, "the trial's message to be taken")
    (trial,) = _trials(api, sid)
    assert trial["state"] == "QUEUED" and trial["attempts"] == 0
    d.start_worker()
    detail = wait_study(api, sid, timeout=120, d=d)
    assert detail["counts"]["COMPLETE"] == 1
    (trial,) = _trials(api, sid)
    assert trial["attempts"] == 1  # trained once


# docs/api.md "The dispatcher": two API replicas on one deployment; one SIGKILLed mid-study
# (its dispatch round's lock dies with it): the other goes on dispatching, every trial runs,
# each once
def test_a_replica_killed_mid_study_does_not_stall_the_other(server_deployment):
    d = server_deployment
    ports = free_port(), free_port()
    apis = [f"http://127.0.0.1:{p}" for p in ports]
    first = d.spawn("api-1", "api", "--port", str(ports[0]), "--workers", "1")
    second = d.spawn("api-2", "api", "--port", str(ports[1]), "--workers", "1")
    wait_healthy(apis[0], first)
    wait_healthy(apis[1], second)
    spec = digits_spec(rho=(0.0, 0.05), batch_size=(16, 32), seeds=(0, 1))
    study = httpx.post(f"{apis[0]}/studies", json=spec).json()["id"]
    d.start_worker()
    wait_for(lambda: any(t["state"] == "COMPLETE" for t in _trials(apis[1], study)) or None,
             120, d, "a first result")  # fmt: skip
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    detail = wait_study(apis[1], study, timeout=300, d=d)
    assert detail["counts"]["COMPLETE"] == 8, detail
    assert all(t["attempts"] == 1 for t in _trials(apis[1], study))  # each trained once
