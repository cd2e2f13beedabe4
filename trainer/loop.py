"""The training loop: ``fit(config, on_epoch) -> TrialResult``.

Read top to bottom: evaluation, one epoch, seeding, then ``fit`` and the pieces it
is made of (setup, resume, checkpoint, final result). The step functions (base:
one pass; SAM: two) live in steps.py. Data is whole tensors on ``config.device``
(see data.py); each epoch is a seeded permutation cut into batches, the last
partial batch included; training batches are augmented on the device (augment.py).

Reproducibility: the same config (seed included) on the CPU gives identical
metrics, and a run resumed from its checkpoint gives the same weights and metrics
as one that never stopped (checkpoint.py). Model init and dropout use torch's
global generator (``torch.manual_seed(seed)``), shuffling its own CPU
``torch.Generator`` (so the order does not depend on the device), augmentation
another one on the device, label noise a numpy generator seeded with the same
seed. GPU kernels are not forced deterministic, so on CUDA runs agree only
approximately.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer import sharpness
from trainer.augment import Augment, build_augment
from trainer.checkpoint import (
    VERSION,
    CheckpointWriter,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from trainer.config import DivergedError, EpochCallback, EpochMetrics, TrialConfig, TrialResult
from trainer.data import Dataset, DatasetError, load_dataset
from trainer.models import build_model
from trainer.schedule import effective_lr, lr_multiplier
from trainer.steps import StepFn, StepOptions, build_step, sam_start_step, sam_step_count

EVAL_BATCH_SIZE = 512  # inference only: larger than training batches, bounded memory
CHECK_EVERY = 16  # training steps per host sync for the divergence check

Prepare = Callable[[Tensor], Tensor]  # a batch of images as the model should see it


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    options: StepOptions | None = None,
    prepare: Prepare | None = None,
) -> tuple[float, float]:
    """(mean plain-CE loss, accuracy) over (x, y) in eval mode, in batches.

    Runs under the training precision (``options``); the loss is summed in fp32.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        xb, yb = x[start : start + EVAL_BATCH_SIZE], y[start : start + EVAL_BATCH_SIZE]
        with options.autocast() if options else contextlib.nullcontext():
            logits = model(prepare(xb) if prepare else xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(dim=1) == yb).sum()
    model.train(was_training)
    return loss_sum.item() / len(x), correct.item() / len(x)


def train_epoch(
    step: StepFn,
    model: nn.Module,
    data: Dataset,
    batch_size: int,
    generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    prepare: Prepare | None = None,
) -> tuple[float, float]:
    """One pass over a fresh permutation of the training set: (mean loss, accuracy).

    ``prepare`` turns the selected images into a training batch (augmentation,
    memory format); the labels are untouched.
    """
    model.train()
    n = len(data.train_x)
    order = torch.randperm(n, generator=generator).to(data.train_x.device)
    loss_sum, pending = 0.0, []  # pending: (step index, loss on the device, batch size, lr)
    correct = torch.zeros((), dtype=torch.int64, device=data.train_x.device)
    for index, start in enumerate(range(0, n, batch_size)):
        batch = order[start : start + batch_size]
        x = data.train_x[batch]
        loss, batch_correct = step(prepare(x) if prepare else x, data.train_y[batch])
        pending.append((index, loss, len(batch), scheduler.get_last_lr()[0]))
        scheduler.step()
        correct += batch_correct  # stays on the device: no sync per step
        if len(pending) == CHECK_EVERY or start + batch_size >= n:
            loss_sum = _add_checked(loss_sum, pending, epoch)
            pending = []
    return loss_sum / n, correct.item() / n


def _add_checked(loss_sum: float, pending: list, epoch: int) -> float:
    """loss_sum + Σ loss·batch size over ``pending`` steps, with one host sync.

    Raises DivergedError naming the first step whose loss is NaN or infinite.
    Checking every CHECK_EVERY steps rather than every step lets a GPU queue
    the next steps' kernels while it computes; a diverged trial runs at most
    CHECK_EVERY − 1 steps too many, on weights that are NaN already.
    """
    values = torch.stack([loss for _, loss, _, _ in pending]).tolist()
    for (index, _, size, lr), value in zip(pending, values, strict=True):
        if not math.isfinite(value):
            raise DivergedError(
                f"training loss is {value} at epoch {epoch}, step {index + 1} (lr={lr:g})"
            )
        loss_sum += value * size
    return loss_sum


def seed_everything(seed: int) -> torch.Generator:
    """Seeds torch (CPU and CUDA), numpy's and Python's global generators.

    Returns the generator that shuffles the training set, kept separate so the
    batch order does not depend on how many random numbers model init drew.
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # nothing here draws from it; third-party code might
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class _Run:
    """One trial's live objects, and what a checkpoint carries between processes."""

    config: TrialConfig
    data: Dataset
    model: nn.Module
    base: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: StepFn
    options: StepOptions
    shuffle: torch.Generator
    augment: Augment | None
    history: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0  # summed over every process that worked on the trial
    earlier_wall_seconds: float = 0.0  # wall time of the processes before this one

    def passes(self, epochs: int) -> int:
        """Forward/backward passes over training batches in ``epochs`` epochs: one per
        base step, two per SAM step (the ascent's and the descent's; steps.build_step)."""
        c = self.config
        per_epoch = math.ceil(len(self.data.train_x) / c.batch_size)
        steps = epochs * per_epoch
        if c.rho == 0:
            return steps
        first = sam_start_step(c.sam_start, c.epochs * per_epoch)
        return steps + sam_step_count(steps, first, c.sam_every)

    @property
    def generators(self) -> dict[str, torch.Generator | None]:
        """Every generator an epoch draws from, by name (what a checkpoint saves)."""
        return {
            "shuffle": self.shuffle,
            "augment": self.augment.generator if self.augment else None,
        }

    def prepare_eval(self, x: Tensor) -> Tensor:
        if self.config.uses_channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_train(self, x: Tensor) -> Tensor:
        return self.prepare_eval(self.augment(x) if self.augment else x)


def fit(config: TrialConfig, on_epoch: EpochCallback | None = None) -> TrialResult:
    """Train one trial; call ``on_epoch`` after every epoch and let it raise.

    With ``config.checkpoint_path``, a checkpoint of every epoch is taken before
    ``on_epoch`` and written in the background while the next epoch trains; fit waits
    for the write before it returns or raises (so an epoch whose callback raises is
    not trained again). A process killed meanwhile leaves the epoch before on disk,
    and the next run trains that one epoch again (the worker's recorder replaces its
    record). A run finding a checkpoint at the start resumes from it. The file is
    left in place: the caller decides when a trial is done with it.
    """
    config.validate()
    started = time.perf_counter()
    run = _setup(config)
    resumed_from = _resume(run, config.checkpoint_path) if config.checkpoint_path else None
    writer = CheckpointWriter()
    try:
        _train_epochs(run, config, started, writer, on_epoch)
        result = _final_result(run, started, resumed_from)  # overlaps the last write
    except BaseException:
        with contextlib.suppress(Exception):  # the error in flight is the one to raise
            writer.wait()  # the last epoch's checkpoint is on disk however fit ends
        raise
    writer.wait()
    return result


def _train_epochs(
    run: _Run,
    config: TrialConfig,
    started: float,
    writer: CheckpointWriter,
    on_epoch: EpochCallback | None,
) -> None:
    for epoch in range(len(run.history) + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        train_loss, train_acc = train_epoch(
            run.step,
            run.model,
            run.data,
            config.batch_size,
            run.shuffle,
            run.scheduler,
            epoch,
            run.prepare_train,
        )
        run.train_seconds += time.perf_counter() - epoch_start  # .item() synced the device
        metrics = _epoch_metrics(run, epoch, train_loss, train_acc)
        metrics.seconds = time.perf_counter() - epoch_start
        run.history.append(metrics)
        if config.checkpoint_path:  # written while the next epoch trains
            writer.save(config.checkpoint_path, _checkpoint(run, started))
        if on_epoch is not None:
            on_epoch(metrics)  # may raise to cancel: propagate unchanged


def _setup(config: TrialConfig) -> _Run:
    """Data, model, optimizer, schedule, generators: everything seeded, nothing run."""
    shuffle = seed_everything(config.seed)
    if config.device.startswith("cuda"):
        # cuDNN picks the fastest convolution algorithm per shape; a trial's batches
        # have two shapes (full and the epoch's last), so it searches twice
        torch.backends.cudnn.benchmark = True
    data = load_dataset(
        config.dataset.name,
        config.dataset.path,
        val_fraction=config.dataset.val_fraction,
        label_noise=config.dataset.label_noise,
        seed=config.seed,
        device=config.device,
    )
    if config.batch_size > len(data.train_y):  # the API bounds this only from file sizes
        raise DatasetError(
            f"batch size {config.batch_size} is larger than the training set of "
            f"{config.dataset.path or config.dataset.name} ({len(data.train_y)} examples after "
            "the validation split)"
        )
    model = build_model(
        config.model.name,
        data.in_channels,
        data.num_classes,
        data.image_size,
        depth=config.model.depth,
        width=config.model.width,
        dropout=config.model.dropout,
    ).to(config.device)
    if config.uses_channels_last:
        # Module.to takes memory_format (documented), but torch's overloads leave it out.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    augment = build_augment(
        config.dataset.augment, config.dataset.name, data.image_size, config.seed, config.device
    )
    steps_per_epoch = math.ceil(len(data.train_x) / config.batch_size)
    # the scheduler counts the steps taken (a checkpoint restores it): SAM late or every k
    # reads the position of the step about to run from it
    step, base, options = build_step(
        model,
        config,
        total_steps=config.epochs * steps_per_epoch,
        position=lambda: scheduler.last_epoch,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(base, lr_multiplier(config, steps_per_epoch))
    return _Run(config, data, model, base, scheduler, step, options, shuffle, augment)


def _checkpoint(run: _Run, started: float) -> dict:
    return {
        "version": VERSION,
        "config": run.config.flat(),
        "epoch": len(run.history),
        "model": run.model.state_dict(),
        "optimizer": run.base.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": capture_rng_state(run.generators, run.config.device),
        "history": [m.to_dict() for m in run.history],
        "train_seconds": run.train_seconds,
        "wall_seconds": run.earlier_wall_seconds + time.perf_counter() - started,
    }


def _resume(run: _Run, path: str) -> int | None:
    """Load the checkpoint at ``path`` into ``run`` if it exists: its epoch, or None."""
    state = load_checkpoint(path, run.config)
    if state is None:
        return None
    run.model.load_state_dict(state["model"])
    run.base.load_state_dict(state["optimizer"])  # lr and momentum/Adam state
    run.scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"], run.generators, run.config.device)
    run.history = [EpochMetrics(**m) for m in state["history"]]
    run.train_seconds = state["train_seconds"]
    run.earlier_wall_seconds = state["wall_seconds"]
    return state["epoch"]


def _epoch_metrics(run: _Run, epoch: int, train_loss: float, train_acc: float) -> EpochMetrics:
    data, model = run.data, run.model
    test_loss, test_acc = evaluate(model, data.test_x, data.test_y, run.options, run.prepare_eval)
    val_loss = val_acc = None
    if data.val_x is not None and data.val_y is not None:
        val_loss, val_acc = evaluate(model, data.val_x, data.val_y, run.options, run.prepare_eval)
    return EpochMetrics(
        epoch=epoch,
        train_loss=train_loss,
        train_accuracy=train_acc,
        test_loss=test_loss,
        test_accuracy=test_acc,
        seconds=0.0,
        val_loss=val_loss,
        val_accuracy=val_acc,
        lr=run.base.param_groups[0]["lr"],
    )


def _final_result(run: _Run, started: float, resumed_from: int | None) -> TrialResult:
    config, data, model, history = run.config, run.data, run.model, run.history
    # Train accuracy of the final weights on the whole (possibly noisy-labelled)
    # training set in eval mode, without augmentation, so gap = train − test
    # measures memorization.
    train_loss, train_acc = evaluate(
        model, data.train_x, data.train_y, run.options, run.prepare_eval
    )
    last = history[-1]
    if not math.isfinite(train_loss) or not math.isfinite(last.test_loss):
        raise DivergedError(f"final loss is not finite (train {train_loss}, test {last.test_loss})")
    clean_acc = None
    if data.train_y_clean is not None:
        _, clean_acc = evaluate(
            model, data.train_x, data.train_y_clean, run.options, run.prepare_eval
        )
    sharp, eig = _sharpness(run)
    return TrialResult(
        train_accuracy=train_acc,
        test_accuracy=last.test_accuracy,
        train_loss=train_loss,
        test_loss=last.test_loss,
        gap=train_acc - last.test_accuracy,
        epochs=len(history),
        wall_seconds=run.earlier_wall_seconds + time.perf_counter() - started,
        samples_per_second=len(data.train_x) * len(history) / max(run.train_seconds, 1e-9),
        passes=run.passes(len(history)),
        val_accuracy=last.val_accuracy,
        val_loss=last.val_loss,
        effective_lr=effective_lr(config),
        sharpness=sharp,
        hessian_max_eig=eig,
        train_clean_accuracy=clean_acc,
        resumed_from_epoch=resumed_from,
        device=config.device,
        precision=config.precision,
        history=history,
    )


def _sharpness(run: _Run) -> tuple[float | None, float | None]:
    """sharpness.measure on the fixed training subset, or (None, None) if disabled."""
    config, data = run.config, run.data
    if config.sharpness.samples == 0:
        return None, None
    index = sharpness.sharpness_subset(len(data.train_x), config.sharpness.samples)
    index = index.to(data.train_x.device)
    return sharpness.measure(
        run.model,
        run.prepare_eval(data.train_x[index]),
        data.train_y[index],
        rho=config.sharpness.rho,
        steps=config.sharpness.ascent_steps,
        iters=config.sharpness.hessian_iters,
    )
