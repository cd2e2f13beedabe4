"""fit(): real learning, reproducibility, divergence, callbacks, the result."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from trainer import (
    DatasetConfig,
    DivergedError,
    EpochMetrics,
    ModelConfig,
    SharpnessConfig,
    TrainConfig,
    TrialConfig,
    fit,
)
from trainer.data import Dataset
from trainer.loop import train_epoch
from trainer.models import build_model
from trainer.steps import build_base_optimizer


def comparable(history: list[EpochMetrics]) -> list[dict]:
    return [{k: v for k, v in m.to_dict().items() if k != "seconds"} for m in history]


def test_small_cnn_with_sam_learns_digits() -> None:
    result = fit(
        TrialConfig(
            dataset=DatasetConfig(name="digits"),
            model=ModelConfig(name="cnn"),
            train=TrainConfig(epochs=10, schedule="constant", weight_decay=5e-4),
            rho=0.05,
            seed=0,
        )
    )
    assert result.test_accuracy >= 0.90
    assert len(result.history) == 10 and [m.epoch for m in result.history] == list(range(1, 11))
    assert result.gap == pytest.approx(result.train_accuracy - result.test_accuracy)
    assert result.samples_per_second > 0 and result.wall_seconds > 0
    # The default sharpness measures run on the final weights.
    assert result.sharpness is not None and result.sharpness >= 0
    assert result.hessian_max_eig is not None and result.hessian_max_eig > 0
    assert result.train_clean_accuracy is None and result.resumed_from_epoch is None
    assert all(m.lr == pytest.approx(0.1) for m in result.history)


# docs/DESIGN.md §1 "What the trainer guarantees": the same seed gives the same metrics on the CPU
def test_same_seed_same_metrics_different_seed_different() -> None:
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic", val_fraction=0.25, label_noise=0.2),
        train=TrainConfig(epochs=2),
        sharpness=SharpnessConfig(samples=0),
        rho=0.05,
        seed=1,
    )
    a, b = fit(config), fit(config)
    c = fit(dataclasses.replace(config, seed=2))
    assert comparable(a.history) == comparable(b.history)
    assert a.train_accuracy == b.train_accuracy and a.test_loss == b.test_loss
    assert comparable(a.history) != comparable(c.history)
    assert a.val_accuracy is not None and a.val_accuracy == a.history[-1].val_accuracy


def test_no_validation_metrics_without_a_split() -> None:
    result = fit(
        TrialConfig(
            dataset=DatasetConfig(name="synthetic"),
            train=TrainConfig(epochs=1),
            sharpness=SharpnessConfig(samples=0),
            rho=0.0,
        )
    )
    assert result.val_accuracy is None and result.history[0].val_loss is None


# docs/faults.md "What must hold": a NaN or infinite loss fails the trial (`diverged`)
@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_absurd_learning_rate_diverges(rho: float) -> None:
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(lr=1e10, epochs=3, weight_decay=5e-4),
        rho=rho,
    )
    with pytest.raises(DivergedError, match=r"epoch 1, step \d+") as caught:
        fit(config)
    assert caught.value.reason == "diverged"


def test_callback_exception_propagates() -> None:
    class Cancelled(Exception):
        pass

    calls: list[int] = []

    def on_epoch(metrics: EpochMetrics) -> None:
        calls.append(metrics.epoch)
        raise Cancelled

    with pytest.raises(Cancelled):
        fit(
            TrialConfig(
                dataset=DatasetConfig(name="synthetic"),
                train=TrainConfig(epochs=3),
                sharpness=SharpnessConfig(samples=0),
            ),
            on_epoch=on_epoch,
        )
    assert calls == [1]


# docs/spec.md "The study spec": `train.momentum` is beta1 for adam/adamw
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_variants_take_momentum_as_beta1(name: str) -> None:
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(lr=1e-3, momentum=0.8, epochs=1),
        sharpness=SharpnessConfig(samples=0),
        base_optimizer=name,
    )
    optimizer = build_base_optimizer(build_model("cnn", 1, 10, 8), config)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.999)
    assert fit(config).history[0].train_loss < 10


@pytest.mark.parametrize(
    "change,match",
    [
        ({"base_optimizer": "lion"}, "lion"),
        ({"model": ModelConfig(name="vgg")}, "vgg"),
        ({"rho": -0.1}, "rho"),
        ({"sam_variant": "gsam"}, "sam_variant"),
        ({"sam_variant": None}, "sam_variant"),  # None only for rho = 0
        ({"train": TrainConfig(epochs=1, precision="fp16")}, "train.precision"),
        ({"dataset": DatasetConfig(name="synthetic", augment="mixup")}, "mixup"),
        ({"train": TrainConfig(epochs=1, grad_clip=0.0)}, "train.grad_clip"),
        ({"train": TrainConfig(epochs=1, label_smoothing=1.0)}, "train.label_smoothing"),
        ({"model": ModelConfig(dropout=-0.1)}, "model.dropout"),
        ({"sharpness": SharpnessConfig(rho=0.0)}, "sharpness.rho"),
        ({"model": ModelConfig(name="wrn", depth=12)}, "depth"),
    ],
)
def test_bad_config_is_refused(change: dict, match: str) -> None:
    base = TrialConfig(dataset=DatasetConfig(name="synthetic"), train=TrainConfig(epochs=1))
    with pytest.raises(ValueError, match=match):
        fit(dataclasses.replace(base, **change))


def test_epoch_visits_every_example_once_including_the_partial_batch() -> None:
    n = 512
    data = Dataset(
        train_x=torch.zeros(n, 1, 8, 8),
        train_y=torch.arange(n),
        test_x=torch.zeros(1, 1, 8, 8),
        test_y=torch.zeros(1, dtype=torch.int64),
        num_classes=n,
    )
    seen: list[torch.Tensor] = []
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(y)
        optimizer.step()  # the scheduler expects an optimizer step first
        return torch.tensor(1.0), torch.tensor(len(y))

    loss, accuracy = train_epoch(
        step, model, data, 100, torch.Generator().manual_seed(0), scheduler, 1
    )
    assert [len(y) for y in seen] == [100] * 5 + [12]
    assert sorted(torch.cat(seen).tolist()) == list(range(n))
    assert torch.cat(seen).tolist() != list(range(n))  # shuffled
    assert (loss, accuracy) == (1.0, 1.0)


# docs/DESIGN.md §1 "What the trainer guarantees": ... with augmentation, dropout and m-sharpness
# too
def test_same_seed_same_metrics_with_augmentation_dropout_and_m_sharpness(
    fake_cifar100: Path,
) -> None:
    config = TrialConfig(
        dataset=DatasetConfig(name="cifar100", path=str(fake_cifar100), augment="crop_flip_cutout"),
        model=ModelConfig(name="wrn", depth=10, width=1, dropout=0.3),
        train=TrainConfig(epochs=2),
        sharpness=SharpnessConfig(samples=16, ascent_steps=2, hessian_iters=2),
        sam_variant="asam",
        rho=1.0,
        m=8,
        batch_size=32,
        seed=3,
    )
    a, b = fit(config), fit(config)
    c = fit(dataclasses.replace(config, seed=4))
    assert comparable(a.history) == comparable(b.history)
    assert (a.train_loss, a.sharpness, a.hessian_max_eig) == (
        b.train_loss,
        b.sharpness,
        b.hessian_max_eig,
    )
    assert comparable(a.history) != comparable(c.history)


# docs/api.md "Trial metrics": `train_clean_accuracy` only when there is label noise
def test_clean_train_accuracy_is_reported_only_under_label_noise() -> None:
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic", label_noise=0.4),
        train=TrainConfig(epochs=1),
        sharpness=SharpnessConfig(samples=0),
    )
    noisy = fit(config)
    assert noisy.train_clean_accuracy is not None and 0 <= noisy.train_clean_accuracy <= 1
    assert noisy.train_clean_accuracy != noisy.train_accuracy
    assert (
        fit(
            dataclasses.replace(config, dataset=DatasetConfig(name="synthetic"))
        ).train_clean_accuracy
        is None
    )


@pytest.mark.parametrize(
    "change",
    [
        {"train": TrainConfig(epochs=1, precision="bf16")},
        {"channels_last": True},
        {"sharpness": SharpnessConfig(samples=0)},
    ],
)
def test_execution_options_run_end_to_end(change: dict) -> None:
    base = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(epochs=1),
        sharpness=SharpnessConfig(samples=64, hessian_iters=2),
    )
    config = dataclasses.replace(base, **change)
    result = fit(config)
    assert result.history[0].train_loss < 10
    assert (result.sharpness is None) == (config.sharpness.samples == 0)


def test_channels_last_reaches_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    formats: list[bool] = []
    from trainer.models import SmallCNN

    original = SmallCNN.forward

    def spy(self, x):
        formats.append(x.is_contiguous(memory_format=torch.channels_last))
        return original(self, x)

    monkeypatch.setattr(SmallCNN, "forward", spy)
    fit(
        TrialConfig(
            dataset=DatasetConfig(name="synthetic"),
            train=TrainConfig(epochs=1),
            sharpness=SharpnessConfig(samples=8, hessian_iters=1),
            channels_last=True,
        )
    )
    assert formats and all(formats)


# docs/spec.md "Refused specs": a batch size larger than the real set fails the trial naming both
def test_a_batch_larger_than_the_training_set_fails_naming_both():
    # The API bounds file datasets from their sizes only; the trainer has the real count.
    from trainer import DatasetError

    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(epochs=1),
        rho=0.0,
        batch_size=600,
    )
    with pytest.raises(DatasetError, match=r"batch size 600 is larger .* synthetic \(512 "):
        fit(config)


# docs/report.md "The report": compute is forward+backward passes (SAM two per step, base one)
@pytest.mark.parametrize("rho,per_step", [(0.0, 1), (0.05, 2)])
def test_passes_count_the_training_forwards(forwards, rho: float, per_step: int) -> None:
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),  # 512 examples: 4 steps of 128 per epoch
        train=TrainConfig(epochs=2),
        sharpness=SharpnessConfig(samples=0),
        rho=rho,
        batch_size=128,
    )
    result = fit(config)
    assert result.passes == 2 * 4 * per_step == sum(forwards)  # training-mode forwards
