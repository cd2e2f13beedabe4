"""Learning-rate scaling with batch size, warmup and decay schedules."""

from __future__ import annotations

import math

import pytest

from trainer import DatasetConfig, ModelConfig, SharpnessConfig, TrainConfig, TrialConfig
from trainer.schedule import effective_lr, lr_multiplier


# docs/spec.md "The study spec": lr_scaling none | linear (lr*B/B0) | sqrt
@pytest.mark.parametrize(
    "scaling,expected", [("none", 0.1), ("linear", 0.1 * 4), ("sqrt", 0.1 * 2)]
)
def test_effective_lr_scales_from_the_base_batch_size(scaling, expected):
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(lr=0.1, base_batch_size=128, lr_scaling=scaling),
        batch_size=512,
    )
    assert effective_lr(config) == pytest.approx(expected)


def test_scaling_without_base_batch_size_is_refused():
    with pytest.raises(ValueError, match="base_batch_size"):
        effective_lr(
            TrialConfig(
                dataset=DatasetConfig(name="synthetic"), train=TrainConfig(lr_scaling="linear")
            )
        )


# docs/spec.md "The study spec": linear warmup, then cosine
def test_warmup_then_cosine_reaches_zero():
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine"),
    )
    f = lr_multiplier(config, steps_per_epoch=10)
    assert [f(s) for s in range(3)] == pytest.approx([0.05, 0.10, 0.15])
    assert f(19) == pytest.approx(1.0) and f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 79 / 80)))
    assert 0 < f(99) < 0.001


# docs/spec.md "The study spec": schedule step (x0.1 at 50% and 75%) and constant
def test_step_schedule_and_constant():
    step = lr_multiplier(
        TrialConfig(
            dataset=DatasetConfig(name="synthetic"), train=TrainConfig(epochs=4, schedule="step")
        ),
        10,
    )
    assert [step(s) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    const = lr_multiplier(
        TrialConfig(
            dataset=DatasetConfig(name="synthetic"),
            train=TrainConfig(epochs=4, schedule="constant"),
        ),
        10,
    )
    assert {const(s) for s in range(40)} == {1.0}


# docs/spec.md "The study spec": each trial records its `effective_lr`
def test_fit_records_the_effective_lr_and_follows_the_schedule():
    from trainer import fit

    seen: list[float] = []
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        model=ModelConfig(name="cnn"),
        train=TrainConfig(
            epochs=2, lr=0.05, base_batch_size=128, lr_scaling="linear", schedule="cosine"
        ),
        sharpness=SharpnessConfig(samples=0),
        rho=0.0,
        batch_size=256,
    )
    result = fit(config, on_epoch=lambda m: seen.append(m.epoch))
    assert result.effective_lr == pytest.approx(0.1) and seen == [1, 2]
