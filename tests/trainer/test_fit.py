"""fit(): real learning, reproducibility, divergence, callbacks, the result."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trainer import DivergedError, EpochMetrics, TrialConfig, fit
from trainer.data import Dataset
from trainer.loop import build_base_optimizer, train_epoch
from trainer.models import build_model


def comparable(history: list[EpochMetrics]) -> list[dict]:
    return [{k: v for k, v in m.to_dict().items() if k != "seconds"} for m in history]


def test_small_cnn_with_sam_learns_digits() -> None:
    result = fit(TrialConfig(dataset="digits", model="cnn", rho=0.05, epochs=10, seed=0))
    assert result.test_accuracy >= 0.90
    assert len(result.history) == 10 and [m.epoch for m in result.history] == list(range(1, 11))
    assert result.gap == pytest.approx(result.train_accuracy - result.test_accuracy)
    assert result.samples_per_second > 0 and result.wall_seconds > 0


def test_same_seed_same_metrics_different_seed_different() -> None:
    config = TrialConfig(
        dataset="synthetic", rho=0.05, epochs=2, val_fraction=0.25, label_noise=0.2, seed=1
    )
    a, b = fit(config), fit(config)
    c = fit(dataclasses.replace(config, seed=2))
    assert comparable(a.history) == comparable(b.history)
    assert a.train_accuracy == b.train_accuracy and a.test_loss == b.test_loss
    assert comparable(a.history) != comparable(c.history)
    assert a.val_accuracy is not None and a.val_accuracy == a.history[-1].val_accuracy


def test_no_validation_metrics_without_a_split() -> None:
    result = fit(TrialConfig(dataset="synthetic", rho=0.0, epochs=1))
    assert result.val_accuracy is None and result.history[0].val_loss is None


@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_absurd_learning_rate_diverges(rho: float) -> None:
    config = TrialConfig(dataset="synthetic", rho=rho, lr=1e10, epochs=3)
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
        fit(TrialConfig(dataset="synthetic", epochs=3), on_epoch=on_epoch)
    assert calls == [1]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_variants_take_momentum_as_beta1(name: str) -> None:
    config = TrialConfig(dataset="synthetic", base_optimizer=name, lr=1e-3, momentum=0.8, epochs=1)
    optimizer = build_base_optimizer(build_model("cnn", 1, 10, 8), config)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.999)
    assert fit(config).history[0].train_loss < 10


@pytest.mark.parametrize(
    "change,match",
    [({"base_optimizer": "lion"}, "lion"), ({"model": "vgg"}, "vgg"), ({"rho": -0.1}, "rho")],
)
def test_bad_config_is_refused(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit(TrialConfig(dataset="synthetic", epochs=1, **change))


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
