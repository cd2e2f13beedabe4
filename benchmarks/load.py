"""Read load on a real uvicorn in front of PostgreSQL, driven by wrk (a real load
generator, `apt-get install wrk`), on a 1000-trial study with recorded results.

    python -m benchmarks.load [--seconds 10] [--clients 1,10,100,500] [--compare 1,100]
                              [--workers 1,N] [--reads study,best,...]

For each number of concurrent clients (wrk's open connections, each with one request
in flight at all times) and each read — the study (`GET /studies/{id}`), its best cell
(`/best`), the report (`/report`), a page of 100 trials (`/trials?limit=100`), the same
page with every epoch's curves (`curves=true`) and the ρ plot (`/plots/rho`, SVG) — it
prints requests/s, p50 and p99 latency, and errors (non-2xx answers, socket errors,
timeouts). After the runs it checks the API's log: no request waited out the pool
(`QueuePool limit`) and the sweeper never failed.

`--workers` runs every row once per number of API processes (`samsweep api --workers`;
default 1 and the host's cores), each on a fresh API and database, in the same run.

`--compare` then runs /best, /report and the plot again on a second API in the same run
with SAMSWEEP_CACHE_BYTES=0, which recomputes each answer per request as the API did
before the cache (the report rebuilt for every /best, every plot drawn again), and
prints new/old throughput ratios.

A closed-loop generator like wrk obeys Little's law: with c clients always waiting,
latency ≈ c / throughput. Past the point where the server is saturated, adding clients
adds latency, not requests/s; the throughput column is what bounds p50 at 100 and 500.
Needs PostgreSQL and Redis as for the tests (SAMSWEEP_TEST_POSTGRES / _REDIS).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

import httpx
from sqlalchemy import create_engine, text

from benchmarks.live import LiveApi, grid_spec, live_api

EPOCHS = 20  # per-epoch curves on every trial, as a real study has
READS = ("study", "best", "report", "trials", "curves", "plot")


def _unit(value: str) -> float:
    """wrk's '1.23ms' / '850.00us' / '2.01s' in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, clients: int, seconds: int) -> dict:
    out = subprocess.run(
        ["wrk", f"-t{min(2, clients)}", f"-c{clients}", f"-d{seconds}s", "--latency",
         "--timeout", "30s", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    pct = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if set(pct) != {"50", "99"}:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _unit(pct["50"]),
        "p99": _unit(pct["99"]),
        "errors": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
    }


def drain(api_url: str, timeout: float = 120) -> None:
    """Wait until the API answers /health promptly again: wrk leaves its last requests in
    flight, and the next row must not be measured against the previous row's backlog."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = time.monotonic()
        try:
            httpx.get(f"{api_url}/health", timeout=10).raise_for_status()
            if time.monotonic() - t < 0.2:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def _populate(db_url: str, study: str | None = None, leave: int = 0) -> None:
    """Results on every trial (of `study`, but its last `leave` trials), as after a
    finished study (the reads then carry them)."""
    rng = random.Random(0)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        query = "SELECT id FROM samsweep_trials"
        if study is not None:
            query += " WHERE study_id = :s"
        ids = [i for (i,) in conn.execute(text(query + " ORDER BY id"), {"s": study})]
        ids = ids[: len(ids) - leave]
        rows, epochs = [], []
        for i in ids:
            acc = rng.uniform(0.8, 0.99)
            curves = [
                {"epoch": e, "train_loss": 1 / e, "test_accuracy": acc * e / EPOCHS, "lr": 0.1}
                for e in range(1, EPOCHS + 1)
            ]
            metrics = {"test_accuracy": acc, "train_accuracy": acc + 0.01, "gap": 0.01}
            rows.append({"id": i, "v": acc, "m": json.dumps(metrics)})
            epochs.extend({"id": i, "e": c["epoch"], "r": json.dumps(c)} for c in curves)
        conn.execute(
            text(
                "UPDATE samsweep_trials SET state='COMPLETE', value=:v, metrics=CAST(:m AS jsonb),"
                " epoch=20, finished_at=now() WHERE id=:id"
            ),
            rows,
        )
        conn.execute(
            text(
                "INSERT INTO samsweep_trial_epochs (trial_id, epoch, record)"
                " VALUES (:id, :e, CAST(:r AS jsonb))"
            ),
            epochs,
        )
    engine.dispose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--clients", default="1,10,100,500")
    p.add_argument("--compare", default="1,100", help="clients for the cache-off runs ('' none)")
    cores = len(os.sched_getaffinity(0))
    p.add_argument("--workers", default=f"1,{cores}", help="API processes, one run each")
    p.add_argument("--reads", default=",".join(READS), help=f"of {', '.join(READS)}")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("benchmarks.load needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    header = f"{'clients':>7} {'read':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    new: dict[tuple[int, str], dict] = {}
    chosen = args.reads.split(",")
    for workers in map(int, args.workers.split(",")):
        with live_api(workers=workers) as api:
            reads = {k: v for k, v in _study(api, announce=True).items() if k in chosen}
            print(f"\n{workers} API process(es)\n{header}")
            for clients in map(int, args.clients.split(",")):
                for read, url in reads.items():
                    m = wrk(url, clients, args.seconds)
                    if workers == 1:
                        new[clients, read] = m
                    print(_row(clients, read, m), flush=True)
                    drain(api.url)
            log_text = api.log_path.read_text()
            print(
                f"pool timeouts: {log_text.count('QueuePool limit')}; "
                f"sweeper failures: {log_text.count('sweep failed')}"
            )
    if not args.compare:
        return 0
    print("\nthe same reads recomputed per request (SAMSWEEP_CACHE_BYTES=0), and new/old req/s")
    print(f"{header} {'new/old':>8}")
    with live_api(cache_bytes="0") as api:
        reads = _study(api, announce=False)
        for clients in map(int, args.compare.split(",")):
            for read in ("best", "report", "plot"):
                m = wrk(reads[read], clients, args.seconds)
                drain(api.url)
                old, now = m["rps"], new.get((clients, read), {}).get("rps")
                ratio = f"{now / old:>7.1f}x" if old and now else f"{'-':>8}"
                print(f"{_row(clients, read, m)} {ratio}", flush=True)
    return 0


def _study(api: LiveApi, announce: bool) -> dict[str, str]:
    """A 1000-trial study with results and curves on `api`; the URLs of the reads."""
    t = time.perf_counter()
    r = httpx.post(f"{api.url}/studies", json=grid_spec(10, 10, 10, EPOCHS), timeout=60)
    created = r.raise_for_status().json()
    create_ms = 1000 * (time.perf_counter() - t)
    sid = created["id"]
    _populate(api.db_url)
    if announce:
        print(f"{created['n_trials']}-trial study created in {create_ms:.0f} ms (POST /studies)")
    base = f"{api.url}/studies/{sid}"
    reads = {  # READS
        "study": base,
        "best": f"{base}/best",
        "report": f"{base}/report",
        "trials": f"{base}/trials?limit=100",
        "curves": f"{base}/trials?limit=100&curves=true",
        "plot": f"{base}/plots/rho",
    }
    for url in reads.values():  # warm: the plot processes start on the first plot
        httpx.get(url, timeout=120).raise_for_status()
    return reads


def _row(clients: int, read: str, m: dict) -> str:
    return (
        f"{clients:>7} {read:>7} {m['rps']:>8.0f} {m['p50']:>8.1f} {m['p99']:>8.1f}"
        f" {m['errors']:>6}"
    )


if __name__ == "__main__":
    sys.exit(main())
