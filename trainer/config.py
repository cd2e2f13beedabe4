"""The trainer's input and output: plain dataclasses, no framework types.

:class:`TrialConfig` has the study spec's shape and names (``samsweep.core.spec``):
sections ``dataset``, ``model``, ``train`` and ``sharpness`` with the spec's fields
and defaults, then one value of each grid axis (``rho``, ``batch_size``,
``base_optimizer``, ``sam_variant``, ``m``) and the ``seed``, then how to execute
(device, memory format, checkpoint). The worker builds it field for field from a
spec and a trial's grid point (``worker.trial_config``; tests/worker/test_trial_config.py
fails if a spec field has no counterpart here or a default or allowed value
drifts), so a trial is reproduced outside the service by restating the spec, not
by translating it. Nothing here knows about Optuna, Celery, HTTP or SQL:
callbacks connect the trainer to the outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

SAM_VARIANTS = ("sam", "asam")
PRECISIONS = ("auto", "fp32", "bf16")
BASELINE_EPOCHS = ("same", "double")


@dataclass(frozen=True)
class DatasetConfig:
    """The spec's ``dataset`` section. ``path`` is already resolved and checked."""

    name: str  # one of trainer.data.DATASETS
    path: str | None = None  # absolute directory (cifar10/100); None for built-ins
    val_fraction: float = 0.0  # stratified, seeded hold-out carved from the training set
    label_noise: float = 0.0  # fraction of *training* labels flipped to another class
    augment: str = "none"  # one of trainer.augment.AUGMENTS (training batches only)


@dataclass(frozen=True)
class ModelConfig:
    """The spec's ``model`` section."""

    name: str = "cnn"  # one of trainer.models.MODELS
    depth: int | None = None  # wrn: 6n+4 (16 if None); ignored by other models
    width: int | None = None  # wrn: widen factor k (8 if None); ignored by others
    dropout: float = 0.0  # wrn: dropout between the two convs of a block; ignored by others


@dataclass(frozen=True)
class TrainConfig:
    """The spec's ``train`` section (the spec requires epochs and lr; tests use these)."""

    epochs: int = 10
    lr: float = 0.1  # given at base_batch_size, scaled to batch_size by lr_scaling
    base_batch_size: int | None = None
    lr_scaling: str = "none"  # one of trainer.schedule.LR_SCALINGS
    warmup_epochs: float = 0.0  # linear warmup, in epochs
    schedule: str = "cosine"  # one of trainer.schedule.SCHEDULES (decay after warmup)
    momentum: float = 0.9  # SGD momentum; Adam/AdamW use it as beta1
    nesterov: bool = False
    weight_decay: float = 0.0  # applied by the base optimizer, never by SAM's ascent
    grad_clip: float | None = None  # max global L2 norm of the gradient the base step uses
    label_smoothing: float = 0.0  # training loss only; evaluation reports plain CE
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on the CPU) | "fp32" | "bf16"
    # "double": a base-optimizer run (rho = 0) trains 2 x epochs, SAM's compute (two
    # passes a step) for the equal-compute comparison of the SAM literature
    baseline_epochs: str = "same"
    # torch.compile the training step's forward/backward (evaluation and the sharpness
    # measurement stay eager); the same numbers up to floating-point reassociation
    compile: bool = False


@dataclass(frozen=True)
class SharpnessConfig:
    """The spec's ``sharpness`` section: the final weights, on a fixed training subset."""

    samples: int = 512  # 0 disables both measurements
    rho: float = 0.05  # the same radius for every trial, so cells are comparable
    ascent_steps: int = 5  # normalized gradient-ascent steps inside the rho-ball
    hessian_iters: int = 20  # max power iterations, top Hessian eigenvalue (stops early)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training run needs: the spec's sections, one grid point, the seed."""

    dataset: DatasetConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    sharpness: SharpnessConfig = SharpnessConfig()
    # one value of each of the spec's search axes (rho = 0: the base optimizer alone,
    # one pass per step; sam_variant and m do not apply to it)
    rho: float = 0.05
    batch_size: int = 128
    base_optimizer: str = "sgd"  # "sgd" | "adam" | "adamw"
    sam_variant: str | None = "sam"  # "sam" | "asam" (Kwon et al. 2021: rho 10-40x larger)
    m: int | None = None  # m-sharpness micro-batch size; None = whole batch; divides batch_size
    # SAM late and SAM every k (rho > 0): base-optimizer steps alone for the first
    # sam_start of training, then a SAM step every sam_every-th step, base steps between
    sam_start: float = 0.0  # fraction of training steps; 0 = SAM throughout, 1 = never
    sam_every: int = 1
    seed: int = 0
    # execution (chosen by the worker; not part of the experiment)
    device: str = "cpu"
    channels_last: bool | None = None  # NHWC for model and batches; None: on CUDA only
    checkpoint_path: str | None = None  # written atomically after every epoch; resumed if present

    @property
    def epochs(self) -> int:
        """The epochs this run trains: ``train.epochs``, twice that for a base-optimizer
        run when ``train.baseline_epochs`` is "double"."""
        double = self.rho == 0 and self.train.baseline_epochs == "double"
        return self.train.epochs * (2 if double else 1)

    @property
    def precision(self) -> str:
        """The precision this run uses: ``train.precision`` with "auto" resolved for the
        device (bf16 autocast on CUDA for tensor cores; fp32 on the CPU, where bf16 is slow)."""
        if self.train.precision == "auto":
            return "bf16" if self.device.startswith("cuda") else "fp32"
        return self.train.precision

    @property
    def uses_channels_last(self) -> bool:
        """Every model here is convolutional: NHWC pays on CUDA, not on the CPU."""
        if self.channels_last is None:
            return self.device.startswith("cuda")
        return self.channels_last

    def validate(self) -> None:
        """Raise ValueError naming the first field that fit() cannot run with.

        Names that other modules own (dataset, model, optimizer, schedule) are
        checked where they are used; this covers the numeric ranges and choices.
        """
        t, s = self.train, self.sharpness
        checks = [
            ("rho", self.rho, self.rho >= 0, ">= 0"),
            ("train.epochs", t.epochs, t.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"),
            (
                "sam_variant",
                self.sam_variant,
                self.sam_variant in SAM_VARIANTS or (self.rho == 0 and self.sam_variant is None),
                f"one of {SAM_VARIANTS} (None only with rho = 0)",
            ),
            ("m", self.m, self.m is None or self.m >= 1, "None or >= 1"),
            ("sam_start", self.sam_start, 0.0 <= self.sam_start <= 1.0, "in [0, 1]"),
            ("sam_every", self.sam_every, self.sam_every >= 1, ">= 1"),
            (
                "train.baseline_epochs",
                t.baseline_epochs,
                t.baseline_epochs in BASELINE_EPOCHS,
                f"one of {BASELINE_EPOCHS}",
            ),
            ("train.grad_clip", t.grad_clip, t.grad_clip is None or t.grad_clip > 0, "None or > 0"),
            (
                "train.label_smoothing",
                t.label_smoothing,
                0.0 <= t.label_smoothing < 1.0,
                "in [0, 1)",
            ),
            ("model.dropout", self.model.dropout, 0.0 <= self.model.dropout < 1.0, "in [0, 1)"),
            ("train.precision", t.precision, t.precision in PRECISIONS, f"one of {PRECISIONS}"),
            ("sharpness.samples", s.samples, s.samples >= 0, ">= 0"),
            ("sharpness.rho", s.rho, s.rho > 0, "> 0"),
            ("sharpness.ascent_steps", s.ascent_steps, s.ascent_steps >= 1, ">= 1"),
            ("sharpness.hessian_iters", s.hessian_iters, s.hessian_iters >= 1, ">= 1"),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        if self.m is not None and self.batch_size % self.m:
            raise ValueError(f"m={self.m} must divide batch_size={self.batch_size}")

    def flat(self) -> dict[str, Any]:
        """Every field as ``{"train.lr": 0.1, "rho": 0.05, ...}`` (checkpoints compare it)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


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
    # Compute: forward+backward passes over training batches (SAM: two per step, the
    # base optimizer one), so cells can be compared at equal compute.
    passes: int = 0
    val_accuracy: float | None = None
    val_loss: float | None = None
    effective_lr: float | None = None  # lr after batch-size scaling, before the schedule
    # Final weights on a fixed training subset, eval mode (None if disabled/not finite):
    sharpness: float | None = None  # max loss increase in the sharpness.rho ball (>= 0)
    hessian_max_eig: float | None = None  # top Hessian eigenvalue, by power iteration
    # Accuracy against the ORIGINAL labels of the (noisy) training set; None without
    # noise. High values mean the model learned the true classes despite the noise.
    train_clean_accuracy: float | None = None
    resumed_from_epoch: int | None = None  # epoch of the checkpoint this run resumed from
    device: str = "cpu"  # where this run trained
    precision: str = "fp32"  # what it trained in (TrialConfig.precision: "auto" resolved)
    history: list[EpochMetrics] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Called after every epoch. It may raise (e.g. to cancel): fit() lets the
# exception propagate unchanged, so the caller decides what it means.
EpochCallback = Callable[[EpochMetrics], None]


class TrainingError(Exception):
    """Base of the trainer's errors; `reason` is a short stable code for the caller."""

    reason = "error"


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""

    reason = "diverged"
