"""The training loop: ``fit(config, on_epoch) -> TrialResult``.

Read top to bottom: optimizer construction, the two step functions (base: one
pass; SAM: two passes), evaluation, then ``fit``. Data is whole tensors on
``config.device`` (see data.py); each epoch is a seeded permutation cut into
batches, the last partial batch included.

Reproducibility: the same config (seed included) on the CPU gives identical
metrics. Model init uses ``torch.manual_seed(seed)``, shuffling its own
``torch.Generator`` (on the CPU, so the order does not depend on the device),
label noise a numpy generator seeded with the same seed. GPU kernels are not
forced deterministic, so on CUDA runs agree only approximately.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import (
    DivergedError,
    EpochCallback,
    EpochMetrics,
    TrialConfig,
    TrialResult,
)
from trainer.data import Dataset, load_dataset
from trainer.models import build_model
from trainer.sam import SAM
from trainer.schedule import effective_lr, lr_multiplier

EVAL_BATCH_SIZE = 512  # inference only: larger than training batches, bounded memory

# One training step on a batch (x, y): returns the loss (a 0-d tensor) and the
# number of correct predictions, both from the unperturbed forward pass.
StepFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def build_base_optimizer(model: nn.Module, config: TrialConfig) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW at the effective lr; weight decay is the base optimizer's.

    Adam and AdamW take ``config.momentum`` as β₁ and keep the usual β₂ = 0.999,
    so a study has one "momentum" knob whatever the optimizer. Adam's weight decay
    is L2 added to the gradient; AdamW's is decoupled (Loshchilov & Hutter, 2019).
    """
    params, name, lr = model.parameters(), config.base_optimizer, effective_lr(config)
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=(config.momentum, 0.999), weight_decay=config.weight_decay)
    raise ValueError(f"unknown base_optimizer {name!r}; expected 'sgd', 'adam' or 'adamw'")


def build_step(model: nn.Module, config: TrialConfig) -> tuple[StepFn, torch.optim.Optimizer]:
    """The step function for ``config`` and the base optimizer it drives.

    ρ = 0 is the study's baseline: plain base-optimizer steps, one pass each,
    never a degenerate two-pass SAM step (DESIGN.md §1).
    """
    base = build_base_optimizer(model, config)
    if config.rho == 0:
        return partial(base_step, model, base), base
    return partial(sam_step, model, SAM(base, rho=config.rho)), base


def base_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """One forward/backward and one base-optimizer update."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), _correct(logits, y)


def sam_step(model: nn.Module, sam: SAM, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """One SAM step (Foret et al., Algorithm 1) on the batch (x, y)."""
    # (1) g = ∇L(w) at the current weights; this pass is the one we log.
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    sam.zero_grad()
    loss.backward()
    sam.first_step()  # ε = ρ g/‖g‖₂, w ← w + ε
    # (2) g' = ∇L(w + ε) on the same batch. BatchNorm still normalizes with this
    # batch's statistics but must not fold the perturbed pass into its running ones.
    with frozen_batchnorm_stats(model):
        F.cross_entropy(model(x), y).backward()
    sam.second_step()  # w ← w − ε exactly, then the base optimizer steps with g'
    return loss.detach(), _correct(logits, y)


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm that leaves running_mean/var/num_batches_tracked alone.

    With ``track_running_stats = False`` a BatchNorm in train mode passes no
    running buffers to the kernel, so nothing is computed or written: cheaper
    than momentum = 0 (which still does the blend arithmetic and still bumps
    num_batches_tracked) and than saving/restoring every buffer (two copies).
    The normalization itself is unchanged (batch statistics in train mode).
    """
    modules = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    flags = [m.track_running_stats for m in modules]
    for m in modules:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.track_running_stats = flag


def _correct(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.detach().argmax(dim=1) == y).sum()


@torch.inference_mode()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) over (x, y) in eval mode, in batches; restores the mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        xb, yb = x[start : start + EVAL_BATCH_SIZE], y[start : start + EVAL_BATCH_SIZE]
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += _correct(logits, yb)
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
) -> tuple[float, float]:
    """One pass over a fresh permutation of the training set: (mean loss, accuracy)."""
    model.train()
    n = len(data.train_x)
    order = torch.randperm(n, generator=generator).to(data.train_x.device)
    loss_sum = 0.0
    correct = torch.zeros((), dtype=torch.int64, device=data.train_x.device)
    for index, start in enumerate(range(0, n, batch_size)):
        batch = order[start : start + batch_size]
        loss, batch_correct = step(data.train_x[batch], data.train_y[batch])
        # Checked every step so a diverged trial stops at once (one host sync per
        # step: negligible next to a forward/backward on the models used here).
        value = loss.item()
        if not math.isfinite(value):
            raise DivergedError(
                f"training loss is {value} at epoch {epoch}, step {index + 1} "
                f"(lr={scheduler.get_last_lr()[0]:g})"
            )
        scheduler.step()
        loss_sum += value * len(batch)
        correct += batch_correct  # stays on the device: no second sync per step
    return loss_sum / n, correct.item() / n


def seed_everything(seed: int) -> torch.Generator:
    """Seeds torch (CPU and CUDA), numpy's and Python's global generators.

    Returns the generator that shuffles the training set, kept separate so the
    batch order does not depend on how many random numbers model init drew.
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # nothing here draws from it; third-party code might
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


def fit(config: TrialConfig, on_epoch: EpochCallback | None = None) -> TrialResult:
    """Train one trial; call ``on_epoch`` after every epoch and let it raise."""
    if config.rho < 0 or config.epochs < 1 or config.batch_size < 1:
        raise ValueError(
            f"need rho >= 0, epochs >= 1, batch_size >= 1; got rho={config.rho}, "
            f"epochs={config.epochs}, batch_size={config.batch_size}"
        )
    started = time.perf_counter()
    generator = seed_everything(config.seed)
    data = load_dataset(
        config.dataset,
        config.dataset_path,
        val_fraction=config.val_fraction,
        label_noise=config.label_noise,
        seed=config.seed,
        device=config.device,
    )
    model = build_model(config.model, data.in_channels, data.num_classes, data.image_size)
    model = model.to(config.device)
    step, base = build_step(model, config)
    steps_per_epoch = math.ceil(len(data.train_x) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(base, lr_multiplier(config, steps_per_epoch))

    history: list[EpochMetrics] = []
    train_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        train_loss, train_acc = train_epoch(
            step, model, data, config.batch_size, generator, scheduler, epoch
        )
        train_seconds += time.perf_counter() - epoch_start  # .item() above synced the device
        metrics = _epoch_metrics(epoch, model, data, train_loss, train_acc)
        metrics.seconds = time.perf_counter() - epoch_start
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)  # may raise to prune or cancel: propagate unchanged

    return _final_result(config, model, data, history, started, train_seconds)


def _epoch_metrics(
    epoch: int, model: nn.Module, data: Dataset, train_loss: float, train_acc: float
) -> EpochMetrics:
    test_loss, test_acc = evaluate(model, data.test_x, data.test_y)
    val_loss = val_acc = None
    if data.val_x is not None and data.val_y is not None:
        val_loss, val_acc = evaluate(model, data.val_x, data.val_y)
    return EpochMetrics(
        epoch=epoch,
        train_loss=train_loss,
        train_accuracy=train_acc,
        test_loss=test_loss,
        test_accuracy=test_acc,
        seconds=0.0,
        val_loss=val_loss,
        val_accuracy=val_acc,
    )


def _final_result(
    config: TrialConfig,
    model: nn.Module,
    data: Dataset,
    history: list[EpochMetrics],
    started: float,
    train_seconds: float,
) -> TrialResult:
    # Train accuracy of the final weights on the whole (possibly noisy-labelled)
    # training set in eval mode, so gap = train − test measures memorization.
    train_loss, train_acc = evaluate(model, data.train_x, data.train_y)
    last = history[-1]
    if not math.isfinite(train_loss) or not math.isfinite(last.test_loss):
        raise DivergedError(f"final loss is not finite (train {train_loss}, test {last.test_loss})")
    return TrialResult(
        train_accuracy=train_acc,
        test_accuracy=last.test_accuracy,
        train_loss=train_loss,
        test_loss=last.test_loss,
        gap=train_acc - last.test_accuracy,
        epochs=len(history),
        wall_seconds=time.perf_counter() - started,
        samples_per_second=len(data.train_x) * len(history) / max(train_seconds, 1e-9),
        val_accuracy=last.val_accuracy,
        val_loss=last.val_loss,
        effective_lr=effective_lr(config),
        history=history,
    )
