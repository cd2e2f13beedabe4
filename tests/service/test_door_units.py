"""The door's parts in-process, for the quick tier (no server): the versioned cache, the
plot renderer's coalescing and bound, the plot caps, the strict body parser."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi.exceptions import RequestValidationError

from samsweep.core.report import build_report
from samsweep.core.spec import StudySpec
from service import plots
from service.api.body import MAX_KEYS, parse_spec
from service.cache import VersionedCache
from service.render import RenderBusy, Renderer
from tests.support.specs import digits_spec


def test_concurrent_misses_compute_once():
    cache = VersionedCache(2**20)
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return b"x" * 10

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("k", compute)))
        for _ in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [b"x" * 10] * 20
    assert cache.get_or_compute("k", compute) == b"x" * 10 and len(calls) == 1


def test_the_cache_is_bounded_in_bytes_and_a_failed_computation_is_not_kept():
    cache = VersionedCache(1000)
    for i in range(10):
        cache.put(i, b"y" * 300)
    assert sum(cache.get(i) is not None for i in range(10)) == 3  # the newest three
    cache.put("huge", b"z" * 5000)  # larger than the whole cache: served, not kept
    assert cache.get("huge") is None

    def fail():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("f", fail)
    assert cache.get_or_compute("f", lambda: b"ok") == b"ok"


def _finished(spec: dict) -> tuple:
    study = StudySpec.model_validate(spec)
    records = []
    from samsweep.core.report import TrialRecord
    from samsweep.core.states import TrialState

    for i, p in enumerate(study.trials()):
        m = {"train_accuracy": 0.9, "test_accuracy": 0.8 + p.rho, "gap": 0.1,
             "val_accuracy": None, "sharpness": 0.1, "hessian_max_eig": 1.0,
             "wall_seconds": 1.0, "passes": 1}  # fmt: skip
        records.append(TrialRecord(p, TrialState.COMPLETE, m, None, number=i))
    return build_report(study, records), records


def test_renders_of_one_plot_are_shared_and_bounded():
    report, trials = _finished(digits_spec())
    cache = VersionedCache(2**24)
    renderer = Renderer(workers=1, queue=0, timeout=60)
    calls = []

    def inputs():
        calls.append(1)
        return "rho", "svg", report, trials, "test_accuracy", None

    async def main():
        same = [renderer.render("a", inputs, cache) for _ in range(5)]
        other = renderer.render("b", inputs, cache)  # a second drawing: beyond 1 + 0
        results = await asyncio.gather(*same, other, return_exceptions=True)
        return results, await renderer.render("a", inputs, cache)

    try:
        results, again = asyncio.run(main())
    finally:
        renderer.close()
    assert all(r == results[0] and b"<svg" in r for r in results[:5])
    assert isinstance(results[5], RenderBusy) and results[5].headers["Retry-After"]
    assert again == results[0] and len(calls) == 1  # one drawing, then the cache


def test_plots_of_grids_too_large_to_read_say_where_the_numbers_are():
    small_report, small_trials = _finished(digits_spec())
    assert all(plots.too_large(k, small_report, small_trials) is None for k in plots.KINDS)
    spec = digits_spec(rho=[0.0] + [0.01 * i for i in range(1, 50)], batch_size=range(8, 38))
    report, trials = _finished(spec)
    assert plots.too_large("rho", report, trials) is not None
    assert plots.too_large("gap", report, trials) is not None
    assert plots.too_large("sharpness", report, trials) is not None
    assert plots.too_large("heatmap", report, trials) is None  # 1500 cells: drawn, unlabelled
    t = time.monotonic()
    svg = plots.render("rho", "svg", report, trials)
    assert b"every number is in the report" in svg and time.monotonic() - t < 10


def test_curves_are_thinned_to_a_bounded_number_of_points():
    points = [(e, e / 10_000) for e in range(1, 10_001)]
    thin = plots._thin(points)
    assert len(thin) <= plots.MAX_POINTS + 1 and thin[0] == points[0] and thin[-1] == points[-1]


@pytest.mark.parametrize(
    "body,reason",
    [
        (json.dumps({f"k{i}": 0 for i in range(MAX_KEYS + 1)}), f"{MAX_KEYS + 1} keys"),
        ('{"name": "a", "name": "b"}', "duplicate key 'name'"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (b"\xff\xfe", "not UTF-8"),
        ("{", "Expecting property name"),
    ],
    ids=["too-many-keys", "duplicate", "deep", "binary", "truncated"],
)
def test_bodies_that_cannot_be_specs_are_refused_as_they_are_parsed(body, reason):
    raw = body if isinstance(body, bytes) else body.encode()
    with pytest.raises(RequestValidationError) as e:
        parse_spec(raw)
    assert reason in json.dumps(e.value.errors())


def test_a_valid_body_is_the_spec():
    assert parse_spec(json.dumps(digits_spec()).encode()).name == "digits-test"
