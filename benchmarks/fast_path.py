"""The training fast path, measured in one run: `make bench` (CPU here, CUDA on a GPU host).

    python -m benchmarks.fast_path [--device auto|cpu|cuda] [--matrix auto|full|cpu]
                                   [--rounds N] [--epoch-images N] [--no-compile] [--out DIR]

Writes ``benchmarks/results/<device>-<date>.json`` (the machine described, every figure,
and which fast-path settings were on) and prints:

1. **The step matrix**: for the CNN, ResNet-18 and WRN-16-8 on CIFAR-shaped batches of
   128 / 512 / 2048 in fp32 and bf16, SAM step / base step (target ≤ 2.02; two passes
   make 2.0 the floor), images/s of a SAM step, the share of a SAM step outside the two
   forward/backward passes (SAM's perturb, restore and base update; target < 3 %), and
   model FLOPs utilization: the FLOPs of a SAM step (counted by
   ``torch.utils.flop_counter``) per second, over the bf16 matmul rate measured on the
   same device. ``--matrix cpu`` (the default without CUDA) keeps the cases a 2-core CPU
   runs in minutes: every model at 128, the CNN at every batch size.
2. **torch.compile** (``train.compile: true``): the ResNet-18 step eager and compiled, in
   the same run (on the CPU at batch 32, compile's own minutes kept out of the timing).
3. **An epoch**: a ResNet-18 SAM epoch over 50 000 CIFAR-shaped images with crop+flip, as
   the trainer runs it (``trainer.loop.train_epoch``: the data resident on the device, augmented
   there, bf16 autocast and NHWC on CUDA, fused SGD on CUDA, cuDNN autotuning), against a plain
   reference (a ``DataLoader`` over host memory, each batch copied to the device, fp32,
   NCHW, foreach SGD, eager). With ``--epoch-images`` below 50 000 (the default on the CPU,
   where an epoch takes half an hour), both are timed on that many images and scaled,
   and the JSON says so. The goal on an H100/H200: ≤ 1.0 s (≥ 40 % of bf16 peak).
4. **A checkpoint**: the time of writing one (trainer.checkpoint.save_checkpoint, fsynced),
   and the part of it the training thread waits for: after every epoch the trainer copies
   the state and a thread writes it while the next epoch trains (CheckpointWriter).

Step timings interleave base and SAM blocks (benchmarks/sam_step.py) so drift in machine load
hits both alike; absolute times on a shared machine drift, ratios much less.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.sam_step import (
    BLOCK_SECONDS,
    WARMUP_STEPS,
    batch,
    bench_case,
    make_steps,
    run_block,
    step_config,
    synchronize,
)
from trainer.augment import build_augment
from trainer.checkpoint import CheckpointWriter, save_checkpoint
from trainer.config import DatasetConfig, ModelConfig, TrainConfig, TrialConfig
from trainer.data import Dataset
from trainer.loop import train_epoch
from trainer.models import build_model
from trainer.sam import SAM
from trainer.steps import StepOptions, build_step, sam_step

MODELS = ("cnn", "resnet18", "wrn")
BATCHES = (128, 512, 2048)
PRECISIONS = ("fp32", "bf16")
EPOCH_IMAGES = 50_000  # CIFAR-10's training set
RESULTS = Path(__file__).parent / "results"


def cases(matrix: str, models: tuple[str, ...] = MODELS) -> list[tuple[str, int, int, int]]:
    """(model, channels, image size, batch) of the step matrix."""
    full = [(m, 3, 32, b) for m in models for b in BATCHES]
    if matrix == "full":
        return full
    return [c for c in full if c[3] == 128 or c[0] == "cnn"]


def machine(device: torch.device) -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    out = {
        "device": str(device),
        "cpu": cpu,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return out


def device_slug(info: dict) -> str:
    name = info.get("gpu") or f"cpu-{info['cpu_cores']}core"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square matmul in ``dtype`` on ``device`` (the MFU denominator)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    repeat, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        a @ b
        repeat += 1
        if repeat % 8 == 0:
            synchronize(device)
    synchronize(device)
    return 2 * n**3 * repeat / (time.perf_counter() - start)


def step_flops(name: str, n: int, device: torch.device, precision: str) -> int:
    """Model FLOPs of one SAM step at batch ``n`` (both passes), as torch counts them."""
    _, sam, _ = make_steps(name, 3, 32, device, precision)
    x, y = batch(3, 32, n, step_config(name, device, precision, False))
    with FlopCounterMode(display=False) as counter:
        sam(x, y)
    return counter.get_total_flops()


def compile_case(n: int, rounds: int, device: torch.device, precision: str) -> dict:
    """The ResNet-18 SAM step eager and compiled, in interleaved rounds (compile's own
    time spent in the warm-up): medians, and eager / compiled as the median per round."""
    _, eager, _ = make_steps("resnet18", 3, 32, device, precision)
    _, compiled, _ = make_steps("resnet18", 3, 32, device, precision, compile=True)
    x, y = batch(3, 32, n, step_config("resnet18", device, precision, False))
    for step in (eager, compiled):
        run_block(step, x, y, WARMUP_STEPS, device)
    repeat = max(1, round(BLOCK_SECONDS / run_block(eager, x, y, 1, device)))
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(rounds):
        for which in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            step = eager if which == "eager" else compiled
            times[which].append(run_block(step, x, y, repeat, device))
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"], strict=True)]
    return {
        "model": "resnet18",
        "batch": n,
        "precision": precision,
        "eager_ms": statistics.median(times["eager"]) * 1e3,
        "compiled_ms": statistics.median(times["compiled"]) * 1e3,
        "speedup": statistics.median(ratios),
        "speedup_range": (min(ratios), max(ratios)),
    }


def epoch_run(
    device: torch.device, images: int, batch_size: int, *, fast: bool, compile: bool = False
) -> dict:
    """Seconds for a ResNet-18 SAM epoch over ``images`` CIFAR-shaped images with crop+flip:
    the trainer's path (``fast``) or the plain DataLoader + fp32 reference."""
    torch.manual_seed(0)
    cpu_x = torch.randn(images, 3, 32, 32)
    cpu_y = torch.randint(0, 10, (images,))
    precision = "auto" if fast else "fp32"
    config = TrialConfig(
        dataset=DatasetConfig(name="cifar10", augment="crop_flip"),
        model=ModelConfig(name="resnet18"),
        train=TrainConfig(epochs=1, lr=0.1, precision=precision, compile=compile),
        rho=0.05,
        batch_size=batch_size,
        device=str(device),
        channels_last=None if fast else False,
    )
    model = build_model("resnet18", 3, 10, 32).to(device)
    augment = build_augment("crop_flip", "cifar10", 32, 0, device)
    assert augment is not None
    if fast:
        torch.backends.cudnn.benchmark = device.type == "cuda"
        if config.uses_channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        step, base, _ = build_step(model, config)
        data = Dataset(cpu_x.to(device), cpu_y.to(device), cpu_x[:1], cpu_y[:1], 10)
        scheduler = torch.optim.lr_scheduler.LambdaLR(base, lambda _: 1.0)
        shuffle = torch.Generator().manual_seed(0)

        def prepare(x: torch.Tensor) -> torch.Tensor:
            out = augment(x)
            if config.uses_channels_last:
                return out.contiguous(memory_format=torch.channels_last)
            return out

        def one_epoch() -> None:
            train_epoch(step, model, data, batch_size, shuffle, scheduler, 1, prepare)

        # warm-up on a few batches: cuDNN's autotuning and compile's graphs are set-up
        warm = Dataset(data.train_x[: 3 * batch_size], data.train_y[: 3 * batch_size],
                       cpu_x[:1], cpu_y[:1], 10)  # fmt: skip
        train_epoch(step, model, warm, batch_size, shuffle, scheduler, 1, prepare)
    else:
        torch.backends.cudnn.benchmark = False
        base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
        sam = SAM(base, rho=0.05)
        options = StepOptions.for_model(model, config)
        loader = DataLoader(
            TensorDataset(cpu_x, cpu_y),
            batch_size=batch_size,
            shuffle=True,
            pin_memory=device.type == "cuda",
        )

        def one_epoch() -> None:
            model.train()
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                loss, _ = sam_step(model, sam, options, augment(x), y)
            loss.item()

        for i, (x, y) in enumerate(loader):  # the same warm-up
            sam_step(model, sam, options, augment(x.to(device)), y.to(device))
            if i == 2:
                break
    synchronize(device)
    start = time.perf_counter()
    one_epoch()
    synchronize(device)
    seconds = time.perf_counter() - start
    scale = EPOCH_IMAGES / images
    return {
        "path": "trainer" if fast else "reference",
        "compile": compile,
        "precision": config.precision,
        "channels_last": config.uses_channels_last,
        "images_timed": images,
        "seconds_timed": seconds,
        "epoch_seconds": seconds * scale,
        "scaled": images != EPOCH_IMAGES,
        "images_per_second": images / seconds,
    }


def checkpoint_ms(device: torch.device) -> dict:
    """Milliseconds to write a ResNet-18 trial's checkpoint (model + SGD momentum), fsynced,
    and what of it the training thread waits for: the copy CheckpointWriter takes before
    its thread writes (``fit`` does this after every epoch)."""
    model = build_model("resnet18", 3, 10, 32).to(device)
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32, device=device)).sum().backward()
    base.step()
    times: dict[str, list[float]] = {"write": [], "training_thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        writer = CheckpointWriter()
        for _ in range(5):
            state = {"model": model.state_dict(), "optimizer": base.state_dict()}
            start = time.perf_counter()
            save_checkpoint(Path(tmp) / "run.pt", state)
            times["write"].append(time.perf_counter() - start)
            start = time.perf_counter()
            writer.save(Path(tmp) / "async.pt", state)
            times["training_thread"].append(time.perf_counter() - start)
            writer.wait()
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--matrix", choices=("auto", "full", "cpu"), default="auto")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (5 on CUDA, 3 on CPU)")
    parser.add_argument("--epoch-images", type=int, help="(50 000 on CUDA, 512 on the CPU)")
    parser.add_argument("--models", default=",".join(MODELS), help="of the step matrix")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    matrix = args.matrix if args.matrix != "auto" else ("full" if cuda else "cpu")
    rounds = args.rounds or (5 if cuda else 3)
    epoch_images = args.epoch_images or (EPOCH_IMAGES if cuda else 512)
    info = machine(device)
    started = time.perf_counter()
    print(f"{info.get('gpu', info['cpu'])}, torch {info['torch']}, {rounds} rounds", flush=True)
    rates = {p: matmul_rate(device, getattr(torch, {"fp32": "float32"}.get(p, "bfloat16")))
             for p in PRECISIONS}  # fmt: skip
    print(f"matmul TFLOP/s: fp32 {rates['fp32'] / 1e12:.3f}, bf16 {rates['bf16'] / 1e12:.3f}")
    print(f"{'model':<9}{'batch':>6} {'prec':<5}{'base ms':>10}{'SAM ms':>10}{'SAM/base':>9} "
          f"{'range':>13}{'outside':>8}{'img/s':>9}{'GFLOP':>8}{'MFU':>7}")  # fmt: skip
    steps = []
    for case in cases(matrix, tuple(args.models.split(","))):
        for precision in PRECISIONS:
            r = bench_case(case, rounds, device, precision)
            r["flops"] = step_flops(case[0], case[3], device, precision)
            r["images_per_second"] = case[3] / (r["sam_ms"] / 1e3)
            r["mfu"] = r["flops"] / (r["sam_ms"] / 1e3) / rates["bf16"]
            low, high = r["ratio_range"]
            print(f"{r['model']:<9}{r['batch']:>6} {precision:<5}{r['base_ms']:>10.2f}"
                  f"{r['sam_ms']:>10.2f}{r['ratio']:>8.3f}x {low:>5.3f}–{high:.3f}x"
                  f"{r['share']:>8.2%}{r['images_per_second']:>9.0f}{r['flops'] / 1e9:>8.1f}"
                  f"{r['mfu']:>7.2%}", flush=True)  # fmt: skip
            steps.append(r)
    compiled = None
    if not args.no_compile:
        n, precision = (128, "bf16") if cuda else (32, "fp32")
        compiled = compile_case(n, rounds, device, precision)
        print(f"compile: ResNet-18 SAM step at {n} ({precision}) eager "
              f"{compiled['eager_ms']:.1f} ms, compiled {compiled['compiled_ms']:.1f} ms: "
              f"{compiled['speedup']:.2f}x", flush=True)  # fmt: skip
    epochs = [epoch_run(device, epoch_images, 128, fast=False),
              epoch_run(device, epoch_images, 128, fast=True)]  # fmt: skip
    if not args.no_compile:
        epochs.append(epoch_run(device, epoch_images, 128, fast=True, compile=True))
    reference = epochs[0]["epoch_seconds"]
    epoch_flops = step_flops("resnet18", 128, device, "bf16") * math.ceil(EPOCH_IMAGES / 128)
    for e in epochs:
        e["speedup_over_reference"] = reference / e["epoch_seconds"]
        e["mfu"] = epoch_flops / e["epoch_seconds"] / rates["bf16"]
        scaled = f" (scaled from {e['images_timed']} images)" if e["scaled"] else ""
        print(f"ResNet-18 SAM epoch, 50 000 images, {e['path']}"
              f"{' + compile' if e['compile'] else ''} ({e['precision']}): "
              f"{e['epoch_seconds']:.1f} s{scaled}, {e['speedup_over_reference']:.2f}x the "
              f"reference, MFU {e['mfu']:.1%}", flush=True)  # fmt: skip
    ckpt = checkpoint_ms(device)
    fast_epoch = epochs[1]["epoch_seconds"]
    print(f"checkpoint (ResNet-18, fsynced): write {ckpt['write']:.0f} ms, of which the "
          f"training thread waits {ckpt['training_thread']:.0f} ms (the copy), "
          f"{ckpt['training_thread'] / 1e3 / fast_epoch:.2%} of the trainer's epoch")  # fmt: skip
    result = {
        "machine": info,
        "date": datetime.date.today().isoformat(),
        "command": "make bench (python -m benchmarks.fast_path)",
        "matrix": matrix,
        "rounds": rounds,
        "fast_path": {  # which of the speed-ups this trainer turns on, as measured
            "data_resident_on_device": True,
            "augment_on_device_per_step": True,
            "bf16_autocast": cuda,
            "channels_last": cuda,
            "cudnn_benchmark": cuda,
            "fused_optimizer": cuda,
            "compile": "compared (train.compile, off by default)",
            "cuda_graphs": False,
            "checkpoint": "every epoch, fsynced, written by a thread from a copy",
            "recording": "on the training thread, after each epoch",
        },
        "matmul_flops_per_second": rates,
        "steps": steps,
        "compile": compiled,
        "epochs": epochs,
        "checkpoint_ms": ckpt,  # write: the whole fsynced write; training_thread: the copy
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{device_slug(info)}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2, default=list) + "\n")
    print(f"wrote {path} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
