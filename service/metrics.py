"""`GET /metrics`: the API's Prometheus metrics (docs/api.md "Metrics").

Two kinds of series:

- **From the database, at each scrape** (`StateCollector`): trials by state, studies, the
  dispatch window and what is in it, the trials still to send, and two histograms over
  the trials that ran: how long they trained (`started_at` → `finished_at`) and how long
  they waited in the broker (`enqueued_at` → `started_at`). Every API process computes the
  same answer, so it does not matter which process a scrape reaches.
- **Of the API processes** (the prometheus_client library): request latency by method,
  route template and status, and database connections in use. With several processes
  (`samsweep api --workers N`) they are kept in prometheus_client's multiprocess mode:
  `samsweep api` gives the processes a fresh directory (`PROMETHEUS_MULTIPROC_DIR`), and a
  scrape sums every process's values, those of a killed one included (a counter never
  goes back), its gauges left out.

No label holds a study's id, name or owner: routes are labelled by their template
(`/studies/{study_id}`), never by the path asked for, so nothing about a study, private
or not, shows through `/metrics`. With private studies, `/metrics` answers only a valid
token, like every read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from samsweep.core.db import Study, Trial
from samsweep.core.pids import alive
from samsweep.core.settings import Settings
from samsweep.core.states import TrialState

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TRIAL_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, 48 * 3600)
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)

# This process's own series. In multiprocess mode prometheus_client writes them to files
# in MULTIPROC_DIR as well, where any process's scrape reads them.
LOCAL = CollectorRegistry(auto_describe=True)
REQUESTS = Histogram(
    "samsweep_http_request_duration_seconds",
    "API requests by method, route template and status, and how long they took.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
    registry=LOCAL,
)
POOL_IN_USE = Gauge(
    "samsweep_db_pool_in_use",
    "Database connections the API processes hold now.",
    registry=LOCAL,
    multiprocess_mode="livesum",
)


class RequestMetrics:
    """ASGI middleware: each request's latency under its route's template and status."""

    def __init__(self, app: Any, pool_in_use: Callable[[], int]) -> None:
        self.app, self.pool_in_use = app, pool_in_use

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, start = 500, time.perf_counter()

        async def recording(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"  # the template
            REQUESTS.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - start
            )
            POOL_IN_USE.set(self.pool_in_use())


def _seconds(pairs: list[tuple[datetime | None, datetime | None]]) -> list[float]:
    return [(b - a).total_seconds() for a, b in pairs if a is not None and b is not None]


def _histogram(name: str, doc: str, values: list[float], buckets: tuple) -> Metric:
    counts = [(str(le), float(sum(1 for v in values if v <= le))) for le in buckets]
    counts.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, doc, buckets=counts, sum_value=sum(values))


class StateCollector(Collector):
    """What the database says now (see the module docstring)."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings

    def collect(self) -> Iterator[Metric]:
        from service.dispatch import window

        with self.sessions() as session:
            by_state = dict(
                session.execute(select(Trial.state, func.count()).group_by(Trial.state)).all()
            )
            studies = session.scalar(select(func.count()).select_from(Study)) or 0
            size, in_flight = window(session, self.settings)
            unsent = session.scalar(
                select(func.count()).where(
                    Trial.state == TrialState.QUEUED, Trial.enqueued_at.is_(None)
                )
            )
            ran = session.execute(
                select(Trial.enqueued_at, Trial.started_at, Trial.finished_at).where(
                    Trial.started_at.is_not(None)
                )
            ).all()
        trials = GaugeMetricFamily("samsweep_trials", "Trials by state.", labels=["state"])
        for state in TrialState:
            trials.add_metric([state.value], by_state.get(state, 0))
        yield trials
        yield GaugeMetricFamily("samsweep_studies", "Studies.", value=studies)
        yield GaugeMetricFamily(
            "samsweep_dispatch_window", "Trials the dispatcher keeps sent ahead.", value=size
        )
        yield GaugeMetricFamily(
            "samsweep_dispatch_in_flight", "Trials sent to the broker, not yet claimed.",
            value=in_flight,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "samsweep_queue_unsent", "Queued trials not yet sent to the broker.", value=unsent
        )
        yield _histogram(
            "samsweep_trial_duration_seconds",
            "Finished trials: from their claim to their end (started_at to finished_at).",
            _seconds([(s, f) for _, s, f in ran]),
            TRIAL_BUCKETS,
        )
        yield _histogram(
            "samsweep_dispatch_latency_seconds",
            "Trials that ran: from being sent to the broker to being claimed.",
            _seconds([(e, s) for e, s, _ in ran]),
            WAIT_BUCKETS,
        )


def exposition(sessions: sessionmaker[Session], settings: Settings) -> bytes:
    """The text a scrape gets: the database's series, then the processes'."""
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(sessions, settings))
    directory = os.environ.get(MULTIPROC_DIR)
    if not directory:
        return generate_latest(state) + generate_latest(LOCAL)
    for name in os.listdir(directory):  # a killed process's gauges stop counting
        pid = _pid_of(name)
        if pid is not None and not alive(pid):
            multiprocess.mark_process_dead(pid, directory)
    processes = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(processes, directory)
    return generate_latest(state) + generate_latest(processes)


def _pid_of(name: str) -> int | None:
    stem = name.rsplit(".", 1)[0]
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None
