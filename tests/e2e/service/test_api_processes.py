"""Several API processes behind one port (`samsweep api --workers N`, docs/api.md "Several
API processes"): one of them leads the sweeper and dispatcher, another takes over when it
is killed, and studies run through them, each trial once."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import psutil

from tests.support.http import wait_for, wait_study
from tests.support.specs import digits_spec

LEADS = re.compile(r"this API process \(pid (\d+)\) leads the sweeper and dispatcher")


def leaders(log_path) -> list[int]:
    return [int(pid) for pid in LEADS.findall(log_path.read_text())]


def api_processes(supervisor: int) -> set[int]:
    """uvicorn's live worker processes under the supervisor (its spawn helper aside)."""
    alive = set()
    for child in psutil.Process(supervisor).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped
                continue
            if "resource_tracker" not in " ".join(child.cmdline()):
                alive.add(child.pid)
        except psutil.Error:  # gone meanwhile
            pass
    return alive


# docs/api.md "Several API processes": N processes answer on one port, exactly one leads the
# sweeper and dispatcher; when it is SIGKILLed uvicorn starts another process, a survivor
# takes the lead, the API keeps answering and a study still runs to the end, each trial once
def test_one_of_several_api_processes_leads_and_another_takes_over(deployment):
    d = deployment
    api = d.start_api(workers=2)
    proc = d.procs[-1]
    wait_for(lambda: len(api_processes(proc.pid)) == 2 or None, 60, d, "two API processes")
    wait_for(lambda: leaders(proc.log_path) or None, 30, d, "a leader")
    time.sleep(2)  # a few rounds: nobody else takes the lead while it lives
    (leader,) = leaders(proc.log_path)
    assert leader in api_processes(proc.pid)
    # every answer comes from one of the two, through the one port
    for _ in range(20):
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200

    sid = httpx.post(f"{api}/studies", json=digits_spec(epochs=1)).json()["id"]
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: len(leaders(proc.log_path)) == 2 or None, 60, d, "a new leader")
    new_leader = leaders(proc.log_path)[-1]
    assert new_leader != leader and new_leader in api_processes(proc.pid)
    wait_for(lambda: len(api_processes(proc.pid)) == 2 or None, 60, d, "the killed one replaced")
    d.start_worker()
    detail = wait_study(api, sid, timeout=240, d=d)
    assert detail["counts"]["COMPLETE"] == 4, detail
    trials = httpx.get(f"{api}/studies/{sid}/trials").json()["trials"]
    assert all(t["attempts"] == 1 for t in trials)
