"""The study spec (DESIGN.md §2): one pydantic model shared by the API and the workers.

This module imports pydantic and the standard library only. Checks that need the
deployment (data root, training-set size, grid maximum) live in `samsweep.catalog`.
Unknown fields are refused rather than ignored, so a typo never silently changes a study.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

DATASETS = ("digits", "cifar10", "synthetic")
MODELS = ("cnn", "resnet18")
BASE_OPTIMIZERS = ("sgd", "adam", "adamw")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Rho = Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)]
BatchSize = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate value {v!r}: each grid value must appear once")
        seen.append(v)
    return values


class DatasetSpec(_Strict):
    name: Literal["digits", "cifar10", "synthetic"]
    path: str | None = Field(
        None, validate_default=True, description="directory under the data root (cifar10)"
    )
    val_fraction: float = Field(0.0, ge=0.0, lt=0.5, allow_inf_nan=False)
    label_noise: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="fraction of training labels flipped to another class (seeded)",
    )

    @field_validator("path")
    @classmethod
    def _path_matches_dataset(cls, path: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("name")
        if name == "cifar10" and not path:
            raise ValueError("required for cifar10: a directory under the data root")
        if name in ("digits", "synthetic") and path is not None:
            raise ValueError(f"dataset {name!r} is built in: omit dataset.path")
        return path


class ModelSpec(_Strict):
    name: Literal["cnn", "resnet18"]


class SearchSpec(_Strict):
    """The grid: every combination is one trial per seed."""

    rho: list[Rho] = Field(min_length=1, description="SAM neighbourhood sizes; 0 = base optimizer")
    batch_size: list[BatchSize] = Field(min_length=1)
    base_optimizer: list[Literal["sgd", "adam", "adamw"]] = Field(min_length=1)

    _unique_rho = field_validator("rho")(_unique)
    _unique_bs = field_validator("batch_size")(_unique)
    _unique_opt = field_validator("base_optimizer")(_unique)


class TrainSpec(_Strict):
    epochs: int = Field(ge=1, le=10_000)
    lr: FiniteFloat = Field(gt=0.0, description="learning rate at base_batch_size")
    base_batch_size: int | None = Field(None, ge=1, description="batch size `lr` is given for")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="lr follows the batch size: none, linear (lr*B/B0), sqrt"
    )
    warmup_epochs: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="linear warmup")
    schedule: Literal["constant", "cosine", "step"] = Field(
        "cosine", description="decay after warmup; step = x0.1 at 50% and 75% of training"
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, allow_inf_nan=False)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)

    @field_validator("lr_scaling")
    @classmethod
    def _scaling_needs_base(cls, scaling: str, info: ValidationInfo) -> str:
        if scaling != "none" and info.data.get("base_batch_size") is None:
            raise ValueError(f"{scaling} scaling needs train.base_batch_size")
        return scaling

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_within_training(cls, warmup: float, info: ValidationInfo) -> float:
        epochs = info.data.get("epochs")
        if epochs is not None and warmup >= epochs:
            raise ValueError(f"must be shorter than train.epochs ({epochs})")
        return warmup

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, nesterov: bool, info: ValidationInfo) -> bool:
        if nesterov and info.data.get("momentum") == 0:
            raise ValueError("nesterov needs train.momentum > 0")
        return nesterov


class StudySpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    dataset: DatasetSpec
    model: ModelSpec
    search: SearchSpec
    train: TrainSpec
    seeds: list[Seed] = Field([0], min_length=1)
    objective: Literal["test_accuracy", "val_accuracy"] = "test_accuracy"

    _unique_seeds = field_validator("seeds")(_unique)

    @field_validator("objective")
    @classmethod
    def _objective_has_data(cls, objective: str, info: ValidationInfo) -> str:
        dataset = info.data.get("dataset")
        if objective == "val_accuracy" and dataset is not None and dataset.val_fraction <= 0:
            raise ValueError("val_accuracy needs dataset.val_fraction > 0")
        return objective

    @property
    def n_trials(self) -> int:
        s = self.search
        return len(s.rho) * len(s.batch_size) * len(s.base_optimizer) * len(self.seeds)

    def cells(self) -> list[Cell]:
        """Every (grid cell, seed) in a fixed order: the trial numbers follow it."""
        s = self.search
        product = itertools.product(s.base_optimizer, s.batch_size, s.rho, self.seeds)
        return [Cell(rho=r, batch_size=b, base_optimizer=o, seed=sd) for o, b, r, sd in product]


class Cell(_Strict):
    """One trial's coordinates in the grid."""

    rho: float
    batch_size: int
    base_optimizer: str
    seed: int

    @property
    def key(self) -> str:
        """Identifies the grid cell (without the seed); unique with the seed per study."""
        return f"rho={self.rho!r}|batch_size={self.batch_size}|base_optimizer={self.base_optimizer}"

    def params(self) -> dict[str, Any]:
        return self.model_dump()


GRID_AXES = ("rho", "batch_size", "base_optimizer")
