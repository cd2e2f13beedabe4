"""A worker's slots on real processes (docs/deploy.md "Slots"): `samsweep worker` on a CPU
host plans one slot, or `--concurrency` slots, each trial with the host's cores divided
by the slots as torch threads; `--gpus` naming a GPU the host lacks is refused."""

from __future__ import annotations

import os

import httpx

from tests.support.http import wait_for, wait_study
from tests.support.specs import digits_spec


def test_cpu_slots_split_the_cores(deployment):
    d = deployment
    api = d.start_api()
    worker = d.start_worker("worker", "--concurrency", "2", "--gpus", "none")
    sid = httpx.post(f"{api}/studies", json=digits_spec(epochs=1)).json()["id"]
    detail = wait_study(api, sid, timeout=240, d=d)
    assert detail["counts"]["COMPLETE"] == 4, detail
    log = worker.log_path.read_text()
    assert "2 slot(s) on the CPU" in log, log[-2000:]
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert log.count(f"training on cpu, {threads} CPU thread(s)") == 4, log[-3000:]


def test_a_gpu_the_host_lacks_is_refused(deployment):
    d = deployment
    done = d.run("worker", "--gpus", "7")
    assert done.returncode == 2 and "no GPU 7 on this host" in done.stderr, done.stderr


def test_one_slot_by_default_on_the_cpu(deployment):
    d = deployment
    worker = d.start_worker("worker")
    wait_for(lambda: "slot(s) on" in worker.log_path.read_text() or None, 60, d,
             "the worker's slots")  # fmt: skip
    assert "1 slot(s) on the CPU" in worker.log_path.read_text()
