"""The study spec and one trial's grid point, as the trainer's config.

The trainer's :class:`~trainer.TrialConfig` has the spec's sections and names, so this
is field for field: each section's values pass through unchanged, and only what the
worker decides is added (the dataset's resolved directory, the device, the checkpoint
file). tests/worker/test_trial_config.py fails when a spec field has no trainer
counterpart, a shared default differs, or the allowed values drift apart.
"""

from __future__ import annotations

from pathlib import Path

from samsweep.core.admission import contained_dataset_dir
from samsweep.core.spec import SCHEDULE_DEFAULTS, TRAIN_AXES, StudySpec, TrialParams
from trainer import DatasetConfig, ModelConfig, SharpnessConfig, TrainConfig, TrialConfig


def trial_config(
    spec: StudySpec,
    params: TrialParams,
    *,
    data_dir: Path | None = None,
    device: str = "cpu",
    checkpoint_path: Path | None = None,
) -> TrialConfig:
    """The trainer's config for one trial. A dataset on disk is resolved under
    `data_dir` and checked again here: files may change after the API accepted them."""
    path = None
    if spec.dataset.path is not None:
        if data_dir is None:
            raise ValueError(f"dataset {spec.dataset.name!r} is on disk: data_dir is needed")
        path = str(contained_dataset_dir(data_dir, spec.dataset.name, spec.dataset.path))
    point = params.model_dump(exclude=set(TRAIN_AXES))
    # None is plain SAM's schedule (and the baseline's): from step 0, every step
    point.update(
        {n: plain if point[n] is None else point[n] for n, plain in SCHEDULE_DEFAULTS.items()}
    )
    # a train setting that is a grid axis (a list in the spec) takes this trial's value
    train = {**spec.train.model_dump(), **dict(params.cell.settings)}
    return TrialConfig(
        dataset=DatasetConfig(**{**spec.dataset.model_dump(), "path": path}),
        model=ModelConfig(**spec.model.model_dump()),
        train=TrainConfig(**train),
        sharpness=SharpnessConfig(**spec.sharpness.model_dump()),
        **point,
        device=device,
        checkpoint_path=None if checkpoint_path is None else str(checkpoint_path),
    )
