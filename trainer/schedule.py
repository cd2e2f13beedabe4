"""Learning rate for batch-size sweeps: scaling rule, linear warmup, decay schedule.

A batch-size sweep is a fair comparison only if the learning rate follows the batch
size (Goyal et al. 2017: linear scaling with warmup; Hoffer et al. 2017 / Krizhevsky
2014: square-root scaling). ``lr`` is given at ``base_batch_size``; the scaled value
is this trial's *effective* learning rate, recorded on its result.

The multiplier is applied per optimizer step through a LambdaLR on the *base*
optimizer, so SAM's two passes per step never count as two scheduler steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from trainer.config import TrialConfig

SCHEDULES = ("constant", "cosine", "step")
LR_SCALINGS = ("none", "linear", "sqrt")
STEP_MILESTONES = (0.5, 0.75)  # step schedule: x0.1 at half and three quarters of training


def effective_lr(config: TrialConfig) -> float:
    """``config.train.lr`` scaled from ``base_batch_size`` to this trial's batch size."""
    if config.train.lr_scaling not in LR_SCALINGS:
        raise ValueError(
            f"unknown lr_scaling {config.train.lr_scaling!r}; expected one of {LR_SCALINGS}"
        )
    if config.train.lr_scaling == "none":
        return config.train.lr
    if not config.train.base_batch_size:
        raise ValueError(f"lr_scaling {config.train.lr_scaling!r} needs base_batch_size")
    ratio = config.batch_size / config.train.base_batch_size
    return config.train.lr * (ratio if config.train.lr_scaling == "linear" else math.sqrt(ratio))


def lr_multiplier(config: TrialConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the effective lr at optimizer step ``step`` (0-based)."""
    if config.train.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.train.schedule!r}; expected one of {SCHEDULES}")
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.train.warmup_epochs * steps_per_epoch), total)

    def multiplier(step: int) -> float:
        if step < warmup:  # linear warmup from lr/warmup to lr
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1 after warmup
        if config.train.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if config.train.schedule == "step":
            return 0.1 ** sum(progress >= m for m in STEP_MILESTONES)
        return 1.0

    return multiplier
