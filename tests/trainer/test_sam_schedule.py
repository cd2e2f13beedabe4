"""SAM late, SAM every k, and the equal-compute baseline (docs/spec.md "Cheaper SAM",
"Equal compute"): the mixed runs are exactly the runs they reduce to, their passes are
counted step by step, and a resume keeps the step position."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.trainer.test_checkpoint import Interrupted, everything, stop_at, without_timing
from trainer import DatasetConfig, ModelConfig, SharpnessConfig, TrainConfig, TrialConfig, fit
from trainer.steps import is_sam_step, sam_start_step, sam_step_count

# 512 synthetic examples, a quarter held out: 6 steps of 64 an epoch, 18 in the run
BASE = TrialConfig(
    dataset=DatasetConfig(name="synthetic", val_fraction=0.25),
    model=ModelConfig(name="cnn"),
    train=TrainConfig(epochs=3, lr=0.05, warmup_epochs=0.5),
    sharpness=SharpnessConfig(samples=32, ascent_steps=2, hessian_iters=3),
    rho=0.1,
    batch_size=64,
    seed=3,
)


def result(config: TrialConfig) -> dict:
    return without_timing(fit(config).to_dict())


# docs/spec.md "Cheaper SAM": sam_start 1.0 trains exactly the baseline, bit for bit on the CPU
def test_sam_from_the_end_is_exactly_the_base_optimizer() -> None:
    late = result(dataclasses.replace(BASE, sam_start=1.0))
    baseline = result(dataclasses.replace(BASE, rho=0.0, sam_variant=None))
    assert late == baseline
    assert late["passes"] == 3 * 6 * 1  # 384 training examples: 6 steps of 64 an epoch


# docs/spec.md "Cheaper SAM": sam_every 1 from step 0 is exactly SAM, bit for bit on the CPU
def test_the_mixed_step_at_every_step_is_exactly_sam() -> None:
    # a start that rounds to step 0 takes the mixed path (the plain path needs exactly 0)
    mixed = result(dataclasses.replace(BASE, sam_start=1e-9, sam_every=1))
    sam = result(BASE)
    assert mixed == sam and sam["passes"] == 3 * 6 * 2
    assert mixed != result(dataclasses.replace(BASE, sam_every=2))


@pytest.mark.parametrize("sam_start,sam_every", [(0.5, 1), (0.0, 3), (0.25, 2)])
def test_passes_count_the_sam_steps_that_ran(forwards, sam_start, sam_every) -> None:
    config = dataclasses.replace(
        BASE, sam_start=sam_start, sam_every=sam_every, sharpness=SharpnessConfig(samples=0)
    )
    out = fit(config)
    first = sam_start_step(sam_start, 18)
    sam_steps = [i for i in range(18) if is_sam_step(i, first, sam_every)]
    assert sam_steps and len(sam_steps) < 18
    assert out.passes == 18 + len(sam_steps) == sum(forwards)  # training-mode forwards
    assert sam_step_count(18, first, sam_every) == len(sam_steps)


def test_sam_step_arithmetic() -> None:
    assert sam_start_step(0.5, 18) == 9 and sam_start_step(1.0, 18) == 18
    assert [i for i in range(10) if is_sam_step(i, 4, 3)] == [4, 7]
    assert sam_step_count(10, 4, 3) == 2 and sam_step_count(10, 10, 1) == 0
    assert sam_step_count(10, 0, 1) == 10


# docs/DESIGN.md §1: a resumed run equals the uninterrupted one; the SAM step schedule too
def test_a_resumed_mixed_run_equals_the_uninterrupted_one(
    tmp_path: Path, fake_cifar100: Path
) -> None:
    def config(where: str) -> TrialConfig:
        return dataclasses.replace(
            everything(tmp_path / where, fake_cifar100), sam_start=0.3, sam_every=3
        )

    whole, parts = config("whole"), config("parts")
    reference = fit(whole)
    with pytest.raises(Interrupted):
        fit(parts, on_epoch=stop_at(2))
    resumed = fit(parts)
    assert resumed.resumed_from_epoch == 2
    assert without_timing(resumed.to_dict()) == without_timing(reference.to_dict())


# docs/spec.md "Equal compute": baseline_epochs "double" trains a baseline twice the epochs
def test_a_doubled_baseline_trains_twice_the_epochs_with_the_schedule_over_them() -> None:
    double = dataclasses.replace(BASE.train, baseline_epochs="double", schedule="cosine")
    baseline = fit(dataclasses.replace(BASE, rho=0.0, sam_variant=None, train=double))
    sam = fit(dataclasses.replace(BASE, train=double))
    assert baseline.epochs == 6 and sam.epochs == 3
    assert baseline.passes == sam.passes == 36  # equal compute: 6 x 6 x 1 = 3 x 6 x 2
    # the cosine decays over the run's own 6 epochs: at epoch 3 the lr is mid-way
    assert baseline.history[-1].lr < baseline.history[2].lr < BASE.train.lr
    assert sam.history[-1].lr == pytest.approx(baseline.history[-1].lr)


def test_bad_schedule_settings_are_refused() -> None:
    for change, match in [
        ({"sam_start": 1.5}, "sam_start"),
        ({"sam_every": 0}, "sam_every"),
        ({"train": TrainConfig(baseline_epochs="triple")}, "baseline_epochs"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit(dataclasses.replace(BASE, **change))
