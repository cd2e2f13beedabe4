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
    dataset: str  # "digits" | "cifar10" | "cifar100" | "synthetic"
    dataset_path: str | None = None  # absolute directory (cifar10/100); None for built-ins
    label_noise: float = 0.0  # fraction of *training* labels flipped to another class
    val_fraction: float = 0.0  # stratified, seeded hold-out carved from the training set
    augment: str = "none"  # "none" | "crop_flip" | "crop_flip_cutout" (training batches only)
    # model
    model: str = "cnn"  # "cnn" | "resnet18" | "wrn"
    model_depth: int | None = None  # wrn: 6n+4 (16 if None); ignored by other models
    model_width: int | None = None  # wrn: widen factor k (8 if None); ignored by others
    dropout: float = 0.0  # wrn: dropout between the two convs of a block; ignored by others
    # SAM (rho = 0 runs the base optimizer alone, one pass per step)
    rho: float = 0.05
    sam_variant: str = "sam"  # "sam" | "asam" (Kwon et al. 2021: useful rho is 10-40x larger)
    m: int | None = None  # m-sharpness micro-batch size; None = whole batch; divides batch_size
    # optimisation
    batch_size: int = 128
    base_optimizer: str = "sgd"  # "sgd" | "adam" | "adamw"
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9  # SGD momentum; Adam/AdamW use it as beta1
    nesterov: bool = False
    weight_decay: float = 5e-4  # applied by the base optimizer, never by SAM's ascent
    grad_clip: float | None = None  # max global L2 norm of the gradient the base step uses
    label_smoothing: float = 0.0  # training loss only; evaluation reports plain CE
    # learning rate: `lr` is given at `base_batch_size` and scaled to `batch_size`
    lr_scaling: str = "none"  # "none" | "linear" | "sqrt"
    base_batch_size: int | None = None
    warmup_epochs: float = 0.0  # linear warmup, in epochs
    schedule: str = "constant"  # "constant" | "cosine" | "step" (decay after warmup)
    seed: int = 0
    # execution (chosen by the worker)
    device: str = "cpu"
    precision: str = "fp32"  # "fp32" | "bf16" (autocast around forwards; SAM's norm in fp32)
    channels_last: bool = False  # NHWC memory format for model and batches (conv models)
    checkpoint_path: str | None = None  # written atomically after every epoch; resumed if present
    # sharpness of the final weights, on a fixed training subset (see sharpness.py)
    sharpness_samples: int = 512  # 0 disables both measurements
    sharpness_rho: float = 0.05  # the same radius for every trial, so cells are comparable
    sharpness_steps: int = 5  # normalized gradient-ascent steps inside the rho-ball
    hessian_iters: int = 20  # max power iterations, top Hessian eigenvalue (stops early)

    def validate(self) -> None:
        """Raise ValueError naming the first field that fit() cannot run with.

        Names that other modules own (dataset, model, optimizer, schedule) are
        checked where they are used; this covers the numeric ranges and choices.
        """
        checks = [
            ("rho", self.rho >= 0, ">= 0"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("sam_variant", self.sam_variant in ("sam", "asam"), "'sam' or 'asam'"),
            ("m", self.m is None or self.m >= 1, "None or >= 1"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "None or > 0"),
            ("label_smoothing", 0.0 <= self.label_smoothing < 1.0, "in [0, 1)"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("precision", self.precision in ("fp32", "bf16"), "'fp32' or 'bf16'"),
            ("sharpness_samples", self.sharpness_samples >= 0, ">= 0"),
            ("sharpness_rho", self.sharpness_rho > 0, "> 0"),
            ("sharpness_steps", self.sharpness_steps >= 1, ">= 1"),
            ("hessian_iters", self.hessian_iters >= 1, ">= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if self.m is not None and self.batch_size % self.m:
            raise ValueError(f"m={self.m} must divide batch_size={self.batch_size}")


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
    lr: float = 0.0  # the base optimizer's lr at the end of the epoch (after the schedule)

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
    # Final weights on a fixed training subset, eval mode (None if disabled/not finite):
    sharpness: float | None = None  # max loss increase in the sharpness_rho ball (>= 0)
    hessian_max_eig: float | None = None  # top Hessian eigenvalue, by power iteration
    # Accuracy against the ORIGINAL labels of the (noisy) training set; None without
    # noise. High values mean the model learned the true classes despite the noise.
    train_clean_accuracy: float | None = None
    resumed_from_epoch: int | None = None  # epoch of the checkpoint this run resumed from
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
