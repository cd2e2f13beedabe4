"""Issue 17's comparison, recomputed from the committed /trials output of both studies:
the full grid (search-grid.yaml) against TPE with the median pruner over the same space
(search-tpe.yaml). Per study: the compute spent (forward+backward passes over training
batches, and the trials' own seconds), the configuration selected by mean validation
accuracy over seeds (baseline and SAM alike), and its test accuracy, mean ± std.

Run: .venv/bin/python experiments/cifar10-subset/compare.py [STUDY...]
(default: search-grid search-tpe; the earlier TPE runs are search-tpe-run1, -run2)
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
PASSES_PER_EPOCH = {True: 1, False: 2}  # the baseline's step is one pass, SAM's two


def load(study: str) -> list[dict]:
    return json.loads((HERE / f"trials-{study}.json").read_text())["trials"]


def cost(trial: dict) -> tuple[int, float]:
    """(passes, seconds) a trial spent: its own count when complete; a pruned trial's from
    the epochs it trained (its steps per epoch from a complete trial of the study)."""
    if trial["metrics"]:
        return trial["metrics"]["passes"], trial["metrics"]["wall_seconds"]
    seconds = math.fsum(e["seconds"] for e in trial["curves"])
    return -len(trial["curves"]), seconds  # passes filled in by summary()


def summary(study: str) -> dict:
    trials = load(study)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    steps = complete[0]["metrics"]["passes"] // (
        complete[0]["metrics"]["epochs"] * PASSES_PER_EPOCH[complete[0]["params"]["rho"] == 0]
    )
    passes = seconds = 0.0
    for t in trials:
        p, s = cost(t)
        if p < 0:  # pruned: epochs trained x steps x passes per step
            p = -p * steps * PASSES_PER_EPOCH[t["params"]["rho"] == 0]
        passes, seconds = passes + p, seconds + s
    configs: dict[tuple, list[dict]] = defaultdict(list)
    for t in complete:
        key = tuple(sorted((k, v) for k, v in t["params"].items() if k != "seed"))
        configs[key].append(t)
    full = {k: ts for k, ts in configs.items() if len(ts) == 2}  # every seed complete

    def mean(ts: list[dict], metric: str) -> float:
        return statistics.fmean(t["metrics"][metric] for t in ts)

    best = max(full, key=lambda k: mean(full[k], "val_accuracy"))
    tests = [t["metrics"]["test_accuracy"] for t in full[best]]
    return {
        "study": study,
        "trials": len(trials),
        "pruned": sum(t["state"] == "PRUNED" for t in trials),
        "configurations": len(
            {tuple(sorted((k, v) for k, v in t["params"].items() if k != "seed")) for t in trials}
        ),  # fmt: skip
        "passes": int(passes),
        "cpu_hours": seconds / 3600,
        "selected": dict(best),
        "val": mean(full[best], "val_accuracy"),
        "test_mean": statistics.fmean(tests),
        "test_std": statistics.stdev(tests),
    }


def main(studies: list[str]) -> None:
    rows = [summary(s) for s in studies or ["search-grid", "search-tpe"]]
    print(f"{'study':<16} {'configs':>7} {'trials':>6} {'pruned':>6} {'passes':>9} "
          f"{'CPU h':>6}  selected (by mean val over 2 seeds)          test %")  # fmt: skip
    for r in rows:
        sel = r["selected"]
        name = f"rho {sel['rho']:.3g}, lr {sel['lr']:.3g}"
        print(f"{r['study']:<16} {r['configurations']:>7} {r['trials']:>6} {r['pruned']:>6} "
              f"{r['passes']:>9} {r['cpu_hours']:>6.2f}  {name:<22} val {100 * r['val']:5.2f}%"
              f"   {100 * r['test_mean']:5.2f} ± {100 * r['test_std']:.2f}")  # fmt: skip
    grid = rows[0]
    for tpe in rows[1:]:
        print(f"{tpe['study']} spent {tpe['passes'] / grid['passes']:.0%} of the grid's passes "
              f"({tpe['cpu_hours'] / grid['cpu_hours']:.0%} of its CPU time)")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
