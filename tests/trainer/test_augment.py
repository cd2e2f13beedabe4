"""Augmentation: what each op does to a batch, seeding, and where it is applied."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer import DatasetConfig, ModelConfig, SharpnessConfig, TrainConfig, TrialConfig, fit
from trainer.augment import (
    Augment,
    augment_generator,
    build_augment,
    cutout,
    random_crop,
    random_flip,
)


def ramp(n: int, size: int = 32) -> torch.Tensor:
    """Images whose pixel values encode their (row, column) and image index, never 0."""
    rows = torch.arange(size).view(size, 1) * size + torch.arange(size) + 1
    return (rows + 10_000 * torch.arange(n).view(n, 1, 1)).float().unsqueeze(1).repeat(1, 3, 1, 1)


# docs/spec.md "The study spec": crop_flip: 4-pixel padded random crop
def test_crop_is_a_shifted_window_with_zero_padding() -> None:
    x = ramp(64)
    out = random_crop(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    shifts = set()
    for i in range(64):
        # Find where the window sits: a nonzero pixel's value tells its source row/col.
        nonzero = out[i, 0].nonzero()
        r, c = nonzero[0].tolist()
        source = int(out[i, 0, r, c].item()) - 10_000 * i - 1
        dy, dx = source // 32 - r, source % 32 - c
        assert -4 <= dy <= 4 and -4 <= dx <= 4
        shifted = torch.roll(x[i], shifts=(-dy, -dx), dims=(1, 2))
        inside = out[i] != 0
        assert torch.equal(out[i][inside], shifted[inside])  # a translation...
        assert (~inside).sum() == 3 * (32 * 32 - (32 - abs(dy)) * (32 - abs(dx)))  # ...zero-padded
        shifts.add((dy, dx))
    assert len(shifts) > 20  # offsets are drawn per image


# docs/spec.md "The study spec": crop_flip: horizontal flip
def test_flip_mirrors_about_half_the_images() -> None:
    x = ramp(200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(200)]
    kept = [torch.equal(out[i], x[i]) for i in range(200)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 70 < sum(flipped) < 130


# docs/spec.md "The study spec": crop_flip_cutout: + 16x16 cutout
def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    x = torch.ones(500, 3, 32, 32)
    out = cutout(x, 16, torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert zeros.max().item() == 256  # a whole 16×16 square when it fits
    assert zeros.min().item() >= 64  # the centre is inside: at least a quarter stays
    assert (zeros < 256).any()  # sometimes clipped at the border (DeVries & Taylor)
    assert torch.equal(out[:, 0], out[:, 2])  # the same square in every channel


def test_sizes_scale_with_the_image() -> None:
    gen = torch.Generator()
    assert (Augment(32, True, gen).pad, Augment(32, True, gen).cutout) == (4, 16)
    assert (Augment(8, True, gen).pad, Augment(8, True, gen).cutout) == (1, 4)
    assert Augment(32, False, gen).cutout == 0


def test_same_seed_same_batch_and_generator_independent_of_the_shuffle_one() -> None:
    x = ramp(16)
    a = build_augment("crop_flip_cutout", "cifar10", 32, seed=3, device="cpu")
    b = build_augment("crop_flip_cutout", "cifar10", 32, seed=3, device="cpu")
    c = build_augment("crop_flip_cutout", "cifar10", 32, seed=4, device="cpu")
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))
    shuffle = torch.Generator().manual_seed(3)
    assert not torch.equal(augment_generator(3, "cpu").get_state(), shuffle.get_state())


# docs/spec.md "The study spec": augment is refused for digits (a flipped digit is another symbol)
@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_flip_is_refused_where_it_changes_the_class(dataset: str) -> None:
    with pytest.raises(ValueError, match="flips"):
        build_augment("crop_flip", dataset, 8, 0, "cpu")
    with pytest.raises(ValueError, match="flips"):
        fit(
            TrialConfig(
                dataset=DatasetConfig(name=dataset, augment="crop_flip_cutout"),
                train=TrainConfig(epochs=1),
            )
        )
    assert build_augment("none", dataset, 8, 0, "cpu") is None


def test_unknown_augment_is_named() -> None:
    with pytest.raises(ValueError, match="mixup"):
        build_augment("mixup", "cifar10", 32, 0, "cpu")


def test_only_training_batches_are_augmented(
    fake_cifar100: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = Augment.__call__

    def spy(self: Augment, x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return original(self, x)

    monkeypatch.setattr(Augment, "__call__", spy)
    config = TrialConfig(
        dataset=DatasetConfig(name="cifar100", path=str(fake_cifar100), augment="crop_flip_cutout"),
        model=ModelConfig(name="cnn"),
        train=TrainConfig(epochs=2),
        sharpness=SharpnessConfig(samples=16, ascent_steps=1, hessian_iters=1),
        batch_size=32,
    )
    fit(config)
    assert seen == [32, 32, 32] * 2  # training batches only: not test, final train, sharpness
