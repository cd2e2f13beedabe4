"""What one request costs the API at its door, on a real uvicorn with PostgreSQL.

    python -m benchmarks.door [--repeat 5]

Hostile grids (the sizes of issue 8: a 17 KB body asking for 10^9 trials, a 1.7 KB one
for 10^6, a list of 100 000 rho values) must be refused in milliseconds with a 422,
and the largest allowed study (SAMSWEEP_MAX_GRID_TRIALS = 2000 trials) created in well
under a second, its trials reaching the broker after the answer. For each it prints
the median and maximum latency seen by the client over --repeat requests, the API's
peak resident memory while serving them (sampled every 5 ms with psutil) against its
memory before, and for the create, how long until every trial was handed to the
broker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import httpx
import psutil
from sqlalchemy import create_engine, text

from benchmarks.live import grid_spec, live_api


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)


def _timed(client: httpx.Client, body: str) -> tuple[int, float]:
    t = time.perf_counter()
    r = client.post("/studies", content=body, headers={"content-type": "application/json"})
    return r.status_code, 1000 * (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    cases = {
        "1000x1000x1000 (17 KB)": grid_spec(1000, 1000, 1000),
        "100x100x100 (1.7 KB)": grid_spec(100, 100, 100),
        "100 000 rho values": grid_spec(100_000, 1, 1),
        "create 2000 trials": grid_spec(20, 10, 10),
    }
    with live_api() as api, httpx.Client(base_url=api.url, timeout=120) as client:
        rss0 = psutil.Process(api.pid).memory_info().rss
        print(f"API resident memory before: {rss0 / 2**20:.0f} MiB")
        head = f"{'request':>24} {'bytes':>8} {'status':>6} {'p50 ms':>8} {'max ms':>8}"
        print(f"{head} {'peak MiB':>9} {'enqueued s':>10}")
        engine = create_engine(api.db_url)
        for label, spec in cases.items():
            body = json.dumps(spec)
            peak = PeakRss(api.pid)
            peak.start()
            times, codes, enqueued = [], set(), []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                code, ms = _timed(client, body)
                codes.add(code)
                times.append(ms)
                if code == 201:  # until the background send has marked every trial
                    while True:
                        with engine.connect() as conn:
                            left = conn.execute(
                                text(
                                    "SELECT count(*) FROM samsweep_trials WHERE enqueued_at IS NULL"
                                )
                            ).scalar_one()
                        if not left:
                            break
                        time.sleep(0.01)
                    enqueued.append(time.perf_counter() - t0)
            peak.stop.set()
            peak.join()
            print(
                f"{label:>24} {len(body):>8} {'/'.join(map(str, sorted(codes))):>6}"
                f" {statistics.median(times):>8.1f} {max(times):>8.1f}"
                f" {peak.peak / 2**20:>9.0f}"
                f" {statistics.median(enqueued) if enqueued else float('nan'):>10.2f}"
            )
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
