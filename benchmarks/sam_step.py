"""Cost of one SAM step against one base-optimizer step (ρ = 0), measured in one run.

    python -m benchmarks.sam_step [--device cpu] [--rounds 10] [--threads N]

SAM is two forward/backward passes, so a step should cost about 2× a base step;
anything above that is SAM's own work (perturb, exact restore, the base update).
For each model/input the two variants run in interleaved rounds (base then SAM,
then SAM then base, ...) so drift in machine load hits both alike; each round
times a block of steps sized to ~0.2 s, and the table reports medians over rounds.
"optimizer share" is the fraction of a SAM step spent in SAM.first_step and
SAM.second_step (ε, w + ε, the restore and the base optimizer's step), i.e.
everything but the two forward/backward passes.

Uses the trainer's own step functions (trainer.loop.base_step / sam_step), on
random inputs: the cost does not depend on the data.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from trainer.config import TrialConfig
from trainer.loop import base_step, build_base_optimizer, sam_step
from trainer.models import build_model
from trainer.sam import SAM

# (model, channels, image size, batch): digits-shaped and CIFAR-shaped inputs;
# resnet18 at batch 32 keeps a CPU run within a few minutes.
CASES = [("cnn", 1, 8, 128), ("cnn", 3, 32, 128), ("resnet18", 3, 32, 32)]
BLOCK_SECONDS = 0.2  # target duration of one timed block of steps
WARMUP_STEPS = 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device, total: list[float]) -> Callable[[], None]:
    """``fn`` that adds its own duration to total[0]."""

    def wrapper() -> None:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        total[0] += time.perf_counter() - start

    return wrapper


def make_steps(name: str, channels: int, size: int, device: torch.device):
    """(base step, SAM step, SAM's optimizer-time accumulator), same init for both."""
    config = TrialConfig(dataset="synthetic", model=name, rho=0.05)
    steps = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(name, channels, 10, size).to(device).train()
        steps.append((model, build_base_optimizer(model, config)))
    (base_model, base_opt), (sam_model, sam_opt) = steps
    sam = SAM(sam_opt, rho=config.rho)
    optimizer_time = [0.0]
    sam.first_step = timed(sam.first_step, device, optimizer_time)
    sam.second_step = timed(sam.second_step, device, optimizer_time)
    return (
        partial(base_step, base_model, base_opt),
        partial(sam_step, sam_model, sam),
        optimizer_time,
    )


def run_block(step, x, y, repeat: int, device: torch.device) -> float:
    """Seconds per step over ``repeat`` consecutive steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        step(x, y)
    synchronize(device)
    return (time.perf_counter() - start) / repeat


def bench_case(case: tuple[str, int, int, int], rounds: int, device: torch.device) -> dict:
    name, channels, size, batch = case
    base, sam, optimizer_time = make_steps(name, channels, size, device)
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    for step in (base, sam):
        run_block(step, x, y, WARMUP_STEPS, device)
    repeat = max(1, round(BLOCK_SECONDS / run_block(base, x, y, 1, device)))
    base_times, sam_times, shares = [], [], []
    for r in range(rounds):
        order = ("base", "sam") if r % 2 == 0 else ("sam", "base")
        for which in order:
            if which == "base":
                base_times.append(run_block(base, x, y, repeat, device))
            else:
                optimizer_time[0] = 0.0
                per_step = run_block(sam, x, y, repeat, device)
                sam_times.append(per_step)
                shares.append(optimizer_time[0] / (per_step * repeat))
    base_ms, sam_ms = statistics.median(base_times) * 1e3, statistics.median(sam_times) * 1e3
    return {
        "model": name,
        "input": f"{channels}x{size}x{size}",
        "batch": batch,
        "base_ms": base_ms,
        "sam_ms": sam_ms,
        "ratio": sam_ms / base_ms,
        "share": statistics.median(shares),
        "repeat": repeat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, help="intra-op CPU threads (torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"{args.rounds} interleaved rounds, medians"
    )
    print(
        f"{'model':<9} {'input':<8} {'batch':>5} {'base ms':>9} {'SAM ms':>9} "
        f"{'SAM/base':>8} {'optimizer share of SAM step':>28} {'steps/block':>11}"
    )
    for case in CASES:
        r = bench_case(case, args.rounds, device)
        print(
            f"{r['model']:<9} {r['input']:<8} {r['batch']:>5} {r['base_ms']:>9.2f} "
            f"{r['sam_ms']:>9.2f} {r['ratio']:>7.2f}x {r['share']:>27.1%} {r['repeat']:>11}",
            flush=True,
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
