"""One configuration shape: the trainer's TrialConfig has the spec's sections, names,
defaults and allowed values, and the worker's mapping passes them through unchanged."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import trainer
from samsweep.core import spec as s
from samsweep.core.spec import StudySpec, TrialParams
from tests.support.specs import digits_spec
from trainer import augment, config, data, models, schedule, steps
from worker.trial_config import trial_config

# spec section -> the trainer's section, and the spec fields that are not a trial's:
# the study's name, its list of seeds and its objective (a trial has one seed, in
# TrialParams), and the search lists (a trial has one value of each, in TrialParams).
SECTIONS = {
    "dataset": (s.DatasetSpec, trainer.DatasetConfig),
    "model": (s.ModelSpec, trainer.ModelConfig),
    "train": (s.TrainSpec, trainer.TrainConfig),
    "sharpness": (s.SharpnessSpec, trainer.SharpnessConfig),
}
# the study's, not a trial's: its grid (or sampler), its pruner (the worker's recorder
# asks it), and how the dispatcher shares the workers with it
NOT_A_TRIALS = {"name", "seeds", "objective", "search", "sampler", "pruner", "priority",
                "max_concurrent_trials"}  # fmt: skip
EXECUTION = {"device", "channels_last", "checkpoint_path"}  # the worker's, not the spec's


def trainer_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("section", SECTIONS)
def test_every_spec_field_has_a_trainer_field_of_the_same_name_and_default(section):
    spec_cls, trainer_cls = SECTIONS[section]
    spec_fields, ours = spec_cls.model_fields, trainer_fields(trainer_cls)
    assert set(spec_fields) == set(ours), f"{section}: spec and trainer fields differ"
    for name, field in spec_fields.items():
        if not field.is_required():  # one set of defaults where the spec has one
            assert ours[name].default == field.default, f"{section}.{name}"


def test_the_config_is_the_specs_sections_plus_one_trial_and_its_execution():
    top = set(trainer_fields(trainer.TrialConfig))
    point = set(TrialParams.model_fields) - set(s.TRAIN_AXES)  # those go into train
    assert top == set(SECTIONS) | point | EXECUTION
    assert set(s.TRAIN_AXES) < set(s.TrainSpec.model_fields)
    assert set(StudySpec.model_fields) == set(SECTIONS) | NOT_A_TRIALS
    assert set(s.SearchSpec.model_fields) < set(TrialParams.model_fields)  # + seed


def literal(annotation) -> set:
    for arg in typing.get_args(annotation) or (annotation,):
        if typing.get_origin(arg) is typing.Literal:
            return set(typing.get_args(arg))
        if typing.get_args(arg):
            return literal(arg)
    return set(typing.get_args(annotation))


def test_the_door_knows_what_the_trainer_can_run():
    """The spec's allowed values are exactly the trainer's, so nothing passes the door
    that every trial would then fail (e.g. synthetic with crop_flip did)."""
    assert literal(s.DatasetSpec.model_fields["name"].annotation) == set(data.DATASETS)
    assert literal(s.DatasetSpec.model_fields["augment"].annotation) == set(augment.AUGMENTS)
    assert set(s.FLIP_SAFE_DATASETS) == set(augment.FLIP_SAFE_DATASETS)
    assert set(s.FILE_DATASETS) == set(data.ON_DISK)
    assert literal(s.ModelSpec.model_fields["name"].annotation) == set(models.MODELS)
    assert literal(s.TrainSpec.model_fields["schedule"].annotation) == set(schedule.SCHEDULES)
    assert literal(s.TrainSpec.model_fields["lr_scaling"].annotation) == set(schedule.LR_SCALINGS)
    assert literal(s.TrainSpec.model_fields["precision"].annotation) == set(config.PRECISIONS)
    search = s.SearchSpec.model_fields
    assert literal(search["base_optimizer"].annotation) == set(steps.OPTIMIZERS)
    assert literal(search["sam_variant"].annotation) == set(config.SAM_VARIANTS)


# docs/spec.md "The study spec": train.lr and train.weight_decay as lists are grid axes: each
# trial trains with its own value
def test_a_train_setting_that_is_an_axis_takes_the_trials_value():
    raw = digits_spec(rho=(0.0,), batch_size=(16,))
    raw["train"].update(lr=[0.1, 0.01], weight_decay=[0.0, 5e-4])
    spec = StudySpec.model_validate(raw)
    trials = spec.trials()
    assert spec.n_trials == len(trials) == 4
    got = {(trial_config(spec, t).train.lr, trial_config(spec, t).train.weight_decay)
           for t in trials}  # fmt: skip
    assert got == {(0.1, 0.0), (0.1, 5e-4), (0.01, 0.0), (0.01, 5e-4)}
    assert len({t.cell_key for t in trials}) == 4
    fixed = StudySpec.model_validate(digits_spec()).trials()[0]
    assert "lr" not in fixed.stored() and "lr" not in fixed.cell_key  # grids as before


def test_the_mapping_passes_every_value_through_unchanged():
    """Every field set away from its default in the spec arrives as it was."""
    raw = digits_spec()
    raw["dataset"].update(val_fraction=0.1, label_noise=0.3)
    raw["model"] = {"name": "wrn", "depth": 16, "width": 2, "dropout": 0.1}
    raw["train"].update(
        base_batch_size=64, lr_scaling="sqrt", warmup_epochs=0.5, schedule="step",
        nesterov=True, grad_clip=5.0, label_smoothing=0.1, precision="fp32",
        baseline_epochs="double",
    )  # fmt: skip
    raw["sharpness"] = {"samples": 64, "rho": 0.1, "ascent_steps": 3, "hessian_iters": 7}
    raw["search"].update(sam_start=[0.5], sam_every=[2])
    spec = StudySpec.model_validate(raw)
    params = next(p for p in spec.trials() if p.rho > 0)
    assert (params.sam_start, params.sam_every) == (0.5, 2)
    cfg = trial_config(spec, params, device="cpu")
    for section in SECTIONS:
        assert dataclasses.asdict(getattr(cfg, section)) == getattr(spec, section).model_dump()
    for name, value in params.model_dump(exclude=set(s.TRAIN_AXES)).items():
        assert getattr(cfg, name) == value
    cfg.validate()


def test_a_rho_zero_trial_runs_the_base_optimizer_without_a_variant():
    spec = StudySpec.model_validate(digits_spec())
    baseline = next(p for p in spec.trials() if p.rho == 0)
    cfg = trial_config(spec, baseline)
    assert cfg.sam_variant is None and cfg.m is None
    assert (cfg.sam_start, cfg.sam_every) == (0.0, 1)  # nothing of SAM's schedule applies
    cfg.validate()


# docs/spec.md "Cheaper SAM": a plain SAM trial carries no schedule (its params and cell
# key are what they always were) and trains SAM from step 0 at every step
def test_plain_sam_carries_no_schedule_and_trains_sam_throughout():
    raw = digits_spec()
    raw["search"].update(sam_start=[0.0, 0.5], sam_every=[1, 4])
    spec = StudySpec.model_validate(raw)
    sam = [p for p in spec.trials() if p.rho > 0]
    plain = [p for p in sam if p.sam_start is None and p.sam_every is None]
    assert len(sam) == 4 * len(plain) and spec.n_trials == len(spec.trials())
    assert "sam_start" not in plain[0].stored() and "sam_start" not in plain[0].cell_key
    cfg = trial_config(spec, plain[0])
    assert (cfg.sam_start, cfg.sam_every) == (0.0, 1)
    late = next(p for p in sam if p.sam_start == 0.5 and p.sam_every == 4)
    assert late.cell_key.endswith("|sam_start=0.5|sam_every=4")
    assert late.cell.method.endswith("from 50% every 4")


def test_a_dataset_on_disk_needs_the_data_root():
    raw = digits_spec()
    raw["dataset"] = {"name": "cifar10", "path": "cifar10"}
    spec = StudySpec.model_validate(raw)
    with pytest.raises(ValueError, match="data_dir"):
        trial_config(spec, spec.trials()[0])
