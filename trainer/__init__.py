"""samsweep's trainer: plain PyTorch SAM training behind ``fit(config, on_epoch)``.

It knows nothing of Optuna, Celery, HTTP or SQL; the worker passes a
:class:`TrialConfig` and a callback, and gets a :class:`TrialResult` back.
Imports torch and numpy only (scikit-learn lazily, for the digits dataset).

Modules, in reading order: config (the dataclasses), data (datasets as device
tensors), augment (batched crop/flip/cutout), models (cnn, resnet18, wrn), sam
(SAM and ASAM), steps (base and SAM steps: m-sharpness, clipping, bf16), schedule
(lr scaling and decay), loop (fit), checkpoint (exact resume), sharpness (the
final weights' loss increase in a ρ-ball and top Hessian eigenvalue).
"""

from trainer.config import (
    DatasetConfig,
    DivergedError,
    EpochCallback,
    EpochMetrics,
    ModelConfig,
    SharpnessConfig,
    TrainConfig,
    TrainingError,
    TrialConfig,
    TrialResult,
)
from trainer.data import DATASETS, Dataset, DatasetError, load_dataset, train_size
from trainer.loop import fit
from trainer.models import MODELS, build_model
from trainer.sam import ASAM, SAM

__all__ = [
    "ASAM",
    "DATASETS",
    "MODELS",
    "SAM",
    "ModelConfig",
    "SharpnessConfig",
    "TrainConfig",
    "Dataset",
    "DatasetConfig",
    "DatasetError",
    "DivergedError",
    "EpochCallback",
    "EpochMetrics",
    "TrainingError",
    "TrialConfig",
    "TrialResult",
    "build_model",
    "fit",
    "load_dataset",
    "train_size",
]
