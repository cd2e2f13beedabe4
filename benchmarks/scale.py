"""What a study's size and a server's number of studies cost, per size, in one run.

    python -m benchmarks.scale [--sizes 100,1000,10000] [--studies 1,50,200] [--repeat 5]

On a real uvicorn (one process) in front of PostgreSQL (a fresh database; Redis as the
broker), as for the tests. For each study size n (one study of n trials, grown by
POST /studies, every trial given 20 epochs of curves and a result except a few left
QUEUED), it reports the median over `--repeat` of:

- `create ms/trial`: POST /studies over n;
- `/best`, `/report` (uncached: the API runs with SAMSWEEP_CACHE_BYTES=0, so each answer
  is computed as the first after a change would be), a `/trials` page of 100, and the
  index (`GET /studies`);
- `sweep ms`: one sweeper round (`service.sweeper.sweep_once`, its dispatch included), in
  this process against the same database;
- `claim+record ms`: a worker's bookkeeping for one trial, training aside: the claim, its
  Optuna trial, 20 epochs recorded (row and Optuna report each), the result told to Optuna
  and recorded on the row.

Then the same reads with the server holding `--studies` studies of 10 trials each
besides. What should stay flat: create per trial, the /trials page, the index per study
listed, the sweep and the claim-and-record; /best and /report read every trial of their
study once, so they may grow with n, no faster. Writes
benchmarks/results/scale-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import select

from benchmarks.live import grid_spec, live_api
from benchmarks.load import _populate
from samsweep.core import optuna_store
from samsweep.core.db import Trial, session_factory
from samsweep.core.queue import make_celery
from samsweep.core.settings import Settings
from samsweep.core.states import TrialState
from service.sweeper import sweep_once
from worker.claim import claim, finish, write_claimed

RESULTS = Path(__file__).parent / "results"
EPOCHS = 20
LEFT_QUEUED = 10  # trials of each study left unfinished, for the claim-and-record rows


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of ``fn`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def shape(n: int) -> tuple[int, int, int]:
    """(rho values, batch sizes, seeds) of an n-trial grid."""
    return {100: (5, 4, 5), 1000: (10, 10, 10), 10000: (25, 20, 20)}.get(n) or (n, 1, 1)


def claim_and_record(settings: Settings, sid: str) -> Callable[[], None]:
    """One QUEUED trial of the study through a worker's bookkeeping, training aside."""
    sessions = session_factory(settings.resolved_database_url)
    url = settings.resolved_optuna_url

    def run() -> None:
        with sessions() as s:
            trial_id = s.scalar(
                select(Trial.id)
                .where(Trial.study_id == sid, Trial.state == TrialState.QUEUED)
                .limit(1)
            )
        c = claim(sessions, trial_id)
        assert c is not None
        optuna_id, number = optuna_store.start_trial(
            url, c.optuna_study_name, c.spec, c.params, c.trial_id
        )
        write_claimed(sessions, c, optuna_trial_id=optuna_id, optuna_trial_number=number)
        for epoch in range(1, EPOCHS + 1):
            record = {"epoch": epoch, "test_accuracy": 0.5, "train_loss": 1.0 / epoch}
            write_claimed(sessions, c, [record], epoch=epoch)
            optuna_store.report(url, optuna_id, epoch, 0.5)
        optuna_store.complete_trial(url, optuna_id, 0.5, {"test_accuracy": 0.5})
        finish(sessions, c, TrialState.COMPLETE, 10.0, value=0.5, metrics={"test_accuracy": 0.5})

    return run


def measure(api_url: str, settings: Settings, sid: str, repeat: int) -> dict:
    base = f"{api_url}/studies/{sid}"
    celery = make_celery(settings)
    sessions = session_factory(settings.resolved_database_url)

    def sweep() -> None:
        with sessions() as s:
            sweep_once(s, celery, settings)

    get = lambda url: lambda: httpx.get(url, timeout=120).raise_for_status()  # noqa: E731
    return {
        "best_ms": timed(get(f"{base}/best"), repeat),
        "report_ms": timed(get(f"{base}/report"), repeat),
        "trials_page_ms": timed(get(f"{base}/trials?limit=100"), repeat),
        "index_ms": timed(get(f"{api_url}/studies"), repeat),
        "sweep_ms": timed(sweep, repeat),
        "claim_record_ms": timed(claim_and_record(settings, sid), min(repeat, LEFT_QUEUED)),
    }


def grow(api_url: str, db_url: str, n: int) -> tuple[str, float]:
    """One n-trial study with results on all but LEFT_QUEUED trials: (id, ms per trial)."""
    start = time.perf_counter()
    r = httpx.post(f"{api_url}/studies", json=grid_spec(*shape(n), EPOCHS), timeout=600)
    per_trial = (time.perf_counter() - start) * 1e3 / n
    sid = r.raise_for_status().json()["id"]
    _populate(db_url, study=sid, leave=LEFT_QUEUED)
    return sid, per_trial


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--studies", default="1,50,200")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    rows = []
    header = (f"{'trials':>7} {'studies':>7} {'create/trial':>12} {'best':>8} {'report':>8} "
              f"{'trials pg':>9} {'index':>8} {'sweep':>8} {'claim+rec':>9}   (ms)")  # fmt: skip
    print(header, flush=True)
    sizes = list(map(int, args.sizes.split(",")))
    with live_api(max_grid_trials=str(max(sizes)), sweep_seconds="3600", cache_bytes="0") as api:
        settings = Settings(
            _env_file=None,
            database_url=api.db_url,
            broker_url=api.env["SAMSWEEP_BROKER_URL"],
            queue=api.queue,
            state_dir=Path(api.env["SAMSWEEP_STATE_DIR"]),
        )
        sid = ""
        for n in sizes:
            sid, per_trial = grow(api.url, api.db_url, n)
            rows.append({"trials": n, "studies": len(rows) + 1, "create_ms_per_trial": per_trial,
                         **measure(api.url, settings, sid, args.repeat)})  # fmt: skip
            print(_row(rows[-1]), flush=True)
        made = len(sizes)
        for total in map(int, args.studies.split(",")):
            while made < total:
                httpx.post(f"{api.url}/studies", json=grid_spec(5, 2, 1, EPOCHS), timeout=60)
                made += 1
            if total <= len(sizes):
                continue
            rows.append({"trials": sizes[-1], "studies": made, "create_ms_per_trial": None,
                         **measure(api.url, settings, sid, args.repeat)})  # fmt: skip
            print(_row(rows[-1]), flush=True)
    out = {
        "machine": {"cpu_cores": len(os.sched_getaffinity(0))},
        "date": datetime.date.today().isoformat(),
        "command": "python -m benchmarks.scale",
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"scale-{out['date']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def _row(r: dict) -> str:
    create = "-" if r["create_ms_per_trial"] is None else f"{r['create_ms_per_trial']:.2f}"
    return (
        f"{r['trials']:>7} {r['studies']:>7} {create:>12} {r['best_ms']:>8.1f} "
        f"{r['report_ms']:>8.1f} {r['trials_page_ms']:>9.1f} {r['index_ms']:>8.1f} "
        f"{r['sweep_ms']:>8.1f} {r['claim_record_ms']:>9.1f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
