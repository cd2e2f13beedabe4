"""The dispatcher, measured on real parts: how long a worker's slot stays free between
two trials (its previous trial's `finished_at` to its next one's `started_at`: the
window's waiting message, the claim, the pool), p50 / p99, on PostgreSQL + Redis and on
the embedded default (SQLite + its SQLite broker); and the broker's queue length while
a 2 000-trial study runs (Redis's list, sampled every 0.1 s: the window, not the study).

    python -m benchmarks.dispatch [--trials 40]

Prints a table and writes benchmarks/results/dispatch-<host>-<date>.json. Needs
PostgreSQL and Redis as the tests do (scripts/services.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, datetime
from pathlib import Path

import httpx
import numpy as np
import redis

from benchmarks.live import REDIS, live_api
from samsweep.client import wait_until_up

RESULTS = Path(__file__).parent / "results"
CLI = [sys.executable, "-m", "samsweep.cli"]


def _spec(n: int, epochs: int = 1) -> dict:
    """n one-epoch digits trials (n <= 100, or a multiple of 100): baselines over seeds,
    at as many batch sizes as it takes."""
    seeds = min(n, 100)
    return {
        "name": "dispatch-bench",
        "dataset": {"name": "digits"},
        "model": {"name": "cnn"},
        "search": {
            "rho": [0.0],
            "batch_size": list(range(256, 256 + n // seeds)),
            "base_optimizer": ["sgd"],
        },
        "train": {"epochs": epochs, "lr": 0.05},
        "seeds": list(range(seeds)),
        "sharpness": {"samples": 0},
    }


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*CLI, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def _wait_complete(api: str, study: str, timeout: float = 900) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{api}/studies/{study}").json()["status"] == "complete":
            r = httpx.get(f"{api}/studies/{study}/trials", params={"limit": 1000})
            return r.json()["trials"]
        time.sleep(0.5)
    raise TimeoutError("the study did not finish")


def _gaps(trials: list[dict]) -> list[float]:
    """One worker, one slot: each trial's start minus the previous one's finish (s)."""
    runs = sorted(
        (datetime.fromisoformat(t["started_at"]), datetime.fromisoformat(t["finished_at"]))
        for t in trials
    )
    return [(nxt[0] - prev[1]).total_seconds() for prev, nxt in zip(runs, runs[1:], strict=False)]


def _row(name: str, gaps: list[float]) -> dict:
    g = np.array(gaps) * 1000
    return {"deployment": name, "n": len(gaps), "p50_ms": float(np.percentile(g, 50)),
            "p99_ms": float(np.percentile(g, 99)), "max_ms": float(g.max())}  # fmt: skip


def slot_gaps_postgres(n: int) -> dict:
    with live_api() as api:
        worker = _spawn(["worker"], {**api.env, "SAMSWEEP_TORCH_THREADS": "1"},
                        api.log_path.with_name("worker.log"))  # fmt: skip
        try:
            study = httpx.post(f"{api.url}/studies", json=_spec(n)).json()["id"]
            return _row("PostgreSQL + Redis", _gaps(_wait_complete(api.url, study)))
        finally:
            _stop(worker)


def slot_gaps_embedded(n: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="samsweep-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMSWEEP_")}
    env.update(SAMSWEEP_STATE_DIR=str(tmp), SAMSWEEP_TORCH_THREADS="1")
    port = 18000 + os.getpid() % 1000
    up = _spawn(["up", "--port", str(port)], env, tmp / "up.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, timeout=120, process=up)
        study = httpx.post(f"{url}/studies", json=_spec(n)).json()["id"]
        return _row("embedded (SQLite)", _gaps(_wait_complete(url, study)))
    finally:
        _stop(up)
        shutil.rmtree(tmp, ignore_errors=True)


def queue_length_large_study(seconds: float = 30) -> dict:
    """A 2 000-trial study with one worker: the most messages Redis held meanwhile."""
    with live_api() as api:
        r = httpx.post(f"{api.url}/studies", json=_spec(2000))
        assert r.status_code == 201, r.text
        study = r.json()
        worker = _spawn(["worker"], {**api.env, "SAMSWEEP_TORCH_THREADS": "1"},
                        api.log_path.with_name("worker.log"))  # fmt: skip
        broker = redis.Redis.from_url(REDIS)
        lengths: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                lengths.append(broker.llen(api.queue))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            time.sleep(seconds)
        finally:
            stop.set()
            sampler.join()
            detail = httpx.get(f"{api.url}/studies/{study['id']}").json()
            httpx.post(f"{api.url}/studies/{study['id']}/cancel")
            _stop(worker)
            broker.close()
    return {
        "n_trials": study["n_trials"],
        "seconds": seconds,
        "samples": len(lengths),
        "max_queue_length": max(lengths),
        "complete_meanwhile": detail["counts"]["COMPLETE"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    rows = [slot_gaps_postgres(args.trials), slot_gaps_embedded(args.trials)]
    queue = queue_length_large_study()
    print(f"{'deployment':<22} {'gaps':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        print(f"{r['deployment']:<22} {r['n']:>5} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} "
              f"{r['max_ms']:>8.0f}")  # fmt: skip
    print(
        f"2 000-trial study, one worker, {queue['seconds']:.0f} s: at most "
        f"{queue['max_queue_length']} messages in Redis ({queue['samples']} samples, "
        f"{queue['complete_meanwhile']} trials complete meanwhile)"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"dispatch-{platform.node()}-{date.today()}.json"
    machine = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
               "platform": platform.platform()}  # fmt: skip
    out.write_text(json.dumps({"machine": machine, "slot_gaps": rows, "queue": queue}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
