"""Cost of one SAM step against one base-optimizer step (ρ = 0), measured in one run.

    python -m benchmarks.sam_step [--device cpu] [--rounds 9] [--threads N]

SAM is two forward/backward passes, so a step should cost about 2× a base step;
anything above that is SAM's own work (perturb, exact restore, the base update).
For each model/input the two variants run in interleaved rounds (base then SAM,
then SAM then base, ...) so drift in machine load hits both alike; each round
times a block of steps sized to ~0.5 s (at least one step). The table reports
median step times, and SAM/base as the median of the per-round ratios (each
round pairs a base block with the SAM block next to it, so slow drift cancels)
with their range: a wide range means the machine was busy, rerun.
"optimizer share" is the fraction of a SAM step spent in SAM.first_step,
SAM.restore and SAM.base_step (ε, w + ε, the exact restore and the base
optimizer's step), i.e. everything but the two forward/backward passes.

Uses the trainer's own step functions (trainer.steps.base_step / sam_step, with
the options build_step would give them), on random inputs: the cost does not
depend on the data. Targets: SAM/base ≤ 2.02; optimizer share < 3% for ResNet-18
and for the small CNN at batch ≥ 128.

Evidence (torch 2.13.0+cpu, 2-core shared VM, no GPU, 2 threads, defaults):

    model     input    batch   base ms    SAM ms SAM/base per-round range optimizer share
    cnn       3x32x32    128    105.61    222.84   2.009x   1.868–2.542x           0.49%
    cnn       3x32x32    512    605.96   1216.08   1.996x   1.709–2.354x           0.11%
    resnet18  3x32x32     32    606.42   1227.10   2.035x   1.958–2.173x           1.91%
    resnet18  3x32x32    128   2651.92   5275.07   2.006x   1.748–2.140x           0.41%

Other processes shared the two cores: over three such runs the medians moved
between 1.87 and 2.13 for the same case, so single runs resolve about ±5%, not
the 1% the target needs. With one thread and 15 rounds the CNN gave 1.999 (128)
and 1.979 (512). What SAM adds beyond two passes is bounded by the optimizer
share minus the base step's own update: for ResNet-18 at 32, about 1.1% of the
SAM step (backup copy 2.4 ms, norm 1.8, scale 0.7, w + ε 1.6, restore 2.4), i.e.
an expected ratio of about 2.007; for the CNN, under 0.5%.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from trainer.config import DatasetConfig, ModelConfig, TrainConfig, TrialConfig
from trainer.models import build_model
from trainer.sam import SAM
from trainer.steps import StepOptions, base_step, build_base_optimizer, sam_step

# (model, channels, image size, batch): CIFAR-shaped inputs, two batch sizes per
# model; resnet18 at 32 and 128 keeps a 2-core CPU run under about five minutes.
CASES = [
    ("cnn", 3, 32, 128),
    ("cnn", 3, 32, 512),
    ("resnet18", 3, 32, 32),
    ("resnet18", 3, 32, 128),
]
BLOCK_SECONDS = 0.5  # target duration of one timed block of steps
WARMUP_STEPS = 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OptimizerTimer:
    """Wraps SAM's weight-moving methods and sums their time while ``enabled``.

    On CUDA the timing needs a sync around each call, which would also slow the
    SAM step it is part of; there, the ratio blocks run with it disabled and extra
    blocks measure the share. On the CPU a sync is a no-op: one block does both.
    """

    def __init__(self, sam: SAM, device: torch.device) -> None:
        self.device, self.total, self.enabled = device, 0.0, device.type == "cpu"
        for method in ("first_step", "restore", "base_step"):
            setattr(sam, method, self._wrap(getattr(sam, method)))

    def _wrap(self, fn: Callable) -> Callable:
        def wrapper(*args) -> None:
            if not self.enabled:
                return fn(*args)
            synchronize(self.device)
            start = time.perf_counter()
            fn(*args)
            synchronize(self.device)
            self.total += time.perf_counter() - start

        return wrapper


def make_steps(
    name: str,
    channels: int,
    size: int,
    device: torch.device,
    precision: str = "fp32",
    compile: bool = False,
):
    """(base step, SAM step, SAM's optimizer timer), same init for both models, each as
    the trainer runs it on ``device`` (build_step's options: fused optimizer and NHWC on
    CUDA, autocast for bf16, the compiled module with ``compile``)."""
    config = step_config(name, device, precision, compile)
    steps = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(name, channels, 10, size).to(device).train()
        if config.uses_channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        options = StepOptions.for_model(model, config)  # what build_step would use
        net = torch.compile(model) if compile else model
        steps.append((net, build_base_optimizer(model, config), options))
    (base_model, base_opt, base_options), (sam_model, sam_opt, sam_options) = steps
    sam = SAM(sam_opt, rho=config.rho)
    timer = OptimizerTimer(sam, device)
    return (
        partial(base_step, base_model, base_opt, base_options),
        partial(sam_step, sam_model, sam, sam_options),
        timer,
    )


def step_config(name: str, device: torch.device, precision: str, compile: bool) -> TrialConfig:
    return TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        model=ModelConfig(name=name),
        train=TrainConfig(precision=precision, compile=compile),
        rho=0.05,
        device=str(device),
    )


def batch(channels: int, size: int, n: int, config: TrialConfig) -> tuple[torch.Tensor, ...]:
    """A random batch (the cost does not depend on the data), laid out as the trainer would."""
    x = torch.randn(n, channels, size, size, device=config.device)
    if config.uses_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (n,), device=config.device)


def run_block(step, x, y, repeat: int, device: torch.device) -> float:
    """Seconds per step over ``repeat`` consecutive steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        step(x, y)
    synchronize(device)
    return (time.perf_counter() - start) / repeat


def share_block(sam, timer: OptimizerTimer, x, y, repeat: int, device: torch.device) -> float:
    """Fraction of a SAM step's time spent in perturb + restore + base step."""
    was, timer.enabled, timer.total = timer.enabled, True, 0.0
    per_step = run_block(sam, x, y, repeat, device)
    timer.enabled = was
    return timer.total / (per_step * repeat)


def bench_case(
    case: tuple[str, int, int, int],
    rounds: int,
    device: torch.device,
    precision: str = "fp32",
    compile: bool = False,
) -> dict:
    name, channels, size, n = case
    base, sam, timer = make_steps(name, channels, size, device, precision, compile)
    x, y = batch(channels, size, n, step_config(name, device, precision, compile))
    for step in (base, sam):
        run_block(step, x, y, WARMUP_STEPS, device)
    repeat = max(1, round(BLOCK_SECONDS / run_block(base, x, y, 1, device)))
    base_times, sam_times, shares = [], [], []
    for r in range(rounds):
        for which in ("base", "sam") if r % 2 == 0 else ("sam", "base"):
            if which == "base":
                base_times.append(run_block(base, x, y, repeat, device))
            elif timer.enabled:  # CPU: the same block gives time and share
                timer.total = 0.0
                sam_times.append(run_block(sam, x, y, repeat, device))
                shares.append(timer.total / (sam_times[-1] * repeat))
            else:
                sam_times.append(run_block(sam, x, y, repeat, device))
                shares.append(share_block(sam, timer, x, y, repeat, device))
    ratios = [s / b for s, b in zip(sam_times, base_times, strict=True)]  # per round
    base_ms, sam_ms = statistics.median(base_times) * 1e3, statistics.median(sam_times) * 1e3
    return {
        "model": name,
        "input": f"{channels}x{size}x{size}",
        "batch": n,
        "precision": precision,
        "compile": compile,
        "base_ms": base_ms,
        "sam_ms": sam_ms,
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "share": statistics.median(shares),
        "repeat": repeat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=9)
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
        f"{'SAM/base':>8} {'per-round range':>15} {'optimizer share':>15} {'steps/block':>11}"
    )
    for case in CASES:
        r = bench_case(case, args.rounds, device)
        low, high = r["ratio_range"]
        print(
            f"{r['model']:<9} {r['input']:<8} {r['batch']:>5} {r['base_ms']:>9.2f} "
            f"{r['sam_ms']:>9.2f} {r['ratio']:>7.3f}x {low:>7.3f}–{high:.3f}x "
            f"{r['share']:>15.2%} {r['repeat']:>11}",
            flush=True,
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
