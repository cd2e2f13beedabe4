"""The trainer's input and output: plain dataclasses, no framework types.

The worker builds a :class:`TrialConfig` from a study spec and a grid cell, calls
:func:`trainer.fit`, and receives a :class:`TrialResult`. Nothing here knows about
Optuna, Celery, HTTP or SQL: callbacks connect the trainer to the outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training run needs. Paths are already resolved and checked."""

    # data
    dataset: str  # "digits" | "cifar10" | "synthetic"
    dataset_path: str | None = None  # absolute directory (cifar10); None for built-ins
    label_noise: float = 0.0  # fraction of *training* labels flipped to another class
    val_fraction: float = 0.0  # stratified, seeded hold-out carved from the training set
    # model
    model: str = "cnn"  # "cnn" | "resnet18"
    # SAM (rho = 0 runs the base optimizer alone, one pass per step)
    rho: float = 0.05
    # optimisation
    batch_size: int = 128
    base_optimizer: str = "sgd"  # "sgd" | "adam" | "adamw"
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9  # SGD momentum; Adam/AdamW use it as beta1
    nesterov: bool = False
    weight_decay: float = 5e-4  # applied by the base optimizer
    # learning rate: `lr` is given at `base_batch_size` and scaled to `batch_size`
    lr_scaling: str = "none"  # "none" | "linear" | "sqrt"
    base_batch_size: int | None = None
    warmup_epochs: float = 0.0  # linear warmup, in epochs
    schedule: str = "constant"  # "constant" | "cosine" | "step" (decay after warmup)
    seed: int = 0
    device: str = "cpu"  # chosen by the worker


@dataclass
class EpochMetrics:
    """One epoch's numbers. Train loss/accuracy come from the unperturbed pass."""

    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    val_loss: float | None = None
    val_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialResult:
    """Final metrics. Accuracies are fractions in [0, 1]; gap = train - test."""

    train_accuracy: float  # final weights, whole training set, no augmentation
    test_accuracy: float
    train_loss: float
    test_loss: float
    gap: float
    epochs: int
    wall_seconds: float
    samples_per_second: float  # training samples processed per second of training
    val_accuracy: float | None = None
    val_loss: float | None = None
    effective_lr: float | None = None  # lr after batch-size scaling, before the schedule
    history: list[EpochMetrics] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Called after every epoch. It may raise (e.g. to prune or cancel): fit() lets the
# exception propagate unchanged, so the caller decides what it means.
EpochCallback = Callable[[EpochMetrics], None]


class TrainingError(Exception):
    """Base of the trainer's errors; `reason` is a short stable code for the caller."""

    reason = "error"


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""

    reason = "diverged"
