"""Trials per hour with one trial per GPU against several, on the same grid, and the
per-cell accuracies of both runs side by side.

    python -m benchmarks.packing [--per-gpu auto] [--epochs 3] [--port 8765]

Each run is `samsweep up` (the embedded default in a fresh state directory, the worker's
own slots) and one study posted to it: the CNN on the CIFAR-10 subset under
../shared/data, ρ ∈ {0, 0.05, 0.1, 0.2} × seeds {0, 1}, batch 128. On a GPU host the two
runs are `SAMSWEEP_SLOTS_PER_GPU=1` and `=auto` (or `--per-gpu N`, docs/deploy.md
"Packing"); on the CPU, where there is no GPU to pack, they are one slot against two
(`--concurrency`), each slot with its share of the cores (docs/deploy.md "Slots").

Trials per hour is the number of trials over the time from the first trial's start to
the last one's end. Packing must not change the results: on the CPU the trainer is
deterministic and the accuracies must be equal; on CUDA kernels are not, and the table
shows how far each cell moved. Writes benchmarks/results/packing-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).parent / "results"


def spec(epochs: int) -> dict:
    return {
        "name": "packing-benchmark",
        "dataset": {"name": "cifar10", "path": "cifar10-subset"},
        "model": {"name": "cnn"},
        "search": {"rho": [0.0, 0.05, 0.1, 0.2], "batch_size": [128], "base_optimizer": ["sgd"]},
        "train": {"epochs": epochs, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "seeds": [0, 1],
        "objective": "test_accuracy",
        "sharpness": {"samples": 0},
    }


def follow(url: str, epochs: int) -> list[dict]:
    """Post the study once the API answers; its trials once it is complete."""
    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    r = httpx.post(f"{url}/studies", json=spec(epochs), timeout=60)
    r.raise_for_status()
    study = r.json()["id"]
    while httpx.get(f"{url}/studies/{study}", timeout=30).json()["status"] != "complete":
        time.sleep(2)
    return httpx.get(f"{url}/studies/{study}/trials", timeout=30).json()["trials"]


def run(label: str, env: dict[str, str], args: list[str], port: int, epochs: int) -> dict:
    """One `samsweep up` and one study: its trials per hour and per-cell accuracies."""
    with tempfile.TemporaryDirectory() as state:
        full = {**os.environ, **env, "SAMSWEEP_STATE_DIR": state, "SAMSWEEP_DATA_DIR": str(DATA)}
        full.pop("SAMSWEEP_TORCH_THREADS", None)  # each slot gets its share of the cores
        log_path = Path(state) / "up.log"
        with open(log_path, "w") as log:
            up = subprocess.Popen(
                [sys.executable, "-m", "samsweep.cli", "up", "--port", str(port), *args],
                env=full,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                trials = follow(f"http://127.0.0.1:{port}", epochs)
            finally:
                up.terminate()
                up.wait(60)
        lines = log_path.read_text().splitlines()
        slots = next((line.strip() for line in lines if "slot(s)" in line), "")
    started = min(datetime.datetime.fromisoformat(t["started_at"]) for t in trials)
    finished = max(datetime.datetime.fromisoformat(t["finished_at"]) for t in trials)
    seconds = (finished - started).total_seconds()
    cells = {
        f"rho={t['params']['rho']} seed={t['params']['seed']}": t["metrics"]["test_accuracy"]
        for t in trials
    }
    device = trials[0]["metrics"]["device"]
    per_hour = len(trials) / seconds * 3600
    print(f"{label}: {len(trials)} trials in {seconds:.0f} s ({per_hour:.0f}/h) on {device}; "
          f"{slots}", flush=True)  # fmt: skip
    return {
        "label": label,
        "slots": slots,
        "device": device,
        "trials": len(trials),
        "seconds": seconds,
        "trials_per_hour": per_hour,
        "test_accuracy": cells,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-gpu", default="auto", help="the packed run's SAMSWEEP_SLOTS_PER_GPU")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from worker.slots import visible_gpus

    gpu = bool(visible_gpus())
    if gpu:
        plans = [
            ("1 per GPU", {"SAMSWEEP_SLOTS_PER_GPU": "1"}, []),
            (f"{args.per_gpu} per GPU", {"SAMSWEEP_SLOTS_PER_GPU": args.per_gpu}, []),
        ]
    else:
        plans = [("1 CPU slot", {}, ["--concurrency", "1"]),
                 ("2 CPU slots", {}, ["--concurrency", "2"])]  # fmt: skip
    runs = [run(label, env, extra, args.port, args.epochs) for label, env, extra in plans]
    one, packed = runs
    diffs = {c: packed["test_accuracy"][c] - one["test_accuracy"][c] for c in one["test_accuracy"]}
    speedup = packed["trials_per_hour"] / one["trials_per_hour"]
    print(f"{'cell':<20}{one['label']:>14}{packed['label']:>14}{'diff':>9}")
    for cell, acc in sorted(one["test_accuracy"].items()):
        print(f"{cell:<20}{acc:>14.4f}{packed['test_accuracy'][cell]:>14.4f}{diffs[cell]:>+9.4f}")
    largest = max(map(abs, diffs.values()))
    print(f"trials/hour: {packed['trials_per_hour']:.0f} against {one['trials_per_hour']:.0f}: "
          f"{speedup:.2f}x; largest accuracy difference {largest:.4f}")  # fmt: skip
    info = {"cpu_cores": len(os.sched_getaffinity(0)), "gpus": visible_gpus()}
    result = {
        "machine": info,
        "date": datetime.date.today().isoformat(),
        "command": "python -m benchmarks.packing",
        "spec": spec(args.epochs),
        "runs": runs,
        "speedup": speedup,
        "max_abs_accuracy_difference": largest,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"packing-{'gpu' if gpu else 'cpu'}-{result['date']}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
