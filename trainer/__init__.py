"""samsweep's trainer: plain PyTorch SAM training behind ``fit(config, on_epoch)``.

It knows nothing of Optuna, Celery, HTTP or SQL; the worker passes a
:class:`TrialConfig` and a callback, and gets a :class:`TrialResult` back.
Imports torch and numpy only (scikit-learn lazily, for the digits dataset).
"""

from trainer.config import (
    DivergedError,
    EpochCallback,
    EpochMetrics,
    TrainingError,
    TrialConfig,
    TrialResult,
)
from trainer.data import DATASETS, Dataset, load_dataset, train_size
from trainer.loop import fit
from trainer.models import build_model
from trainer.sam import SAM

__all__ = [
    "DATASETS",
    "SAM",
    "Dataset",
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
