"""Datasets: sizes, normalization, the fixed validation split, seeded label noise."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import flip_labels, load_dataset, train_size

CIFAR_SUBSET = Path("/work/shared/data/cifar10-subset")
needs_cifar = pytest.mark.skipif(not CIFAR_SUBSET.is_dir(), reason="shared CIFAR-10 subset absent")


def test_digits_split_and_normalization() -> None:
    data = load_dataset("digits")
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert data.train_y.dtype == torch.int64 and data.num_classes == 10
    assert abs(data.train_x.mean().item()) < 1e-4
    assert abs(data.train_x.std(correction=0).item() - 1) < 1e-4
    assert data.val_x is None and train_size("digits") == 1437


def test_synthetic_is_fixed() -> None:
    a, b = load_dataset("synthetic", seed=0), load_dataset("synthetic", seed=9)
    assert a.train_x.shape == (512, 1, 8, 8) and a.test_x.shape == (128, 1, 8, 8)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert set(a.train_y.tolist()) == set(range(10))


def test_validation_split_is_stratified_sized_and_fixed_across_seeds() -> None:
    clean = load_dataset("digits")
    a = load_dataset("digits", val_fraction=0.1, seed=0)
    b = load_dataset("digits", val_fraction=0.1, seed=7, label_noise=0.3)
    n_val = round(0.1 * 1437)  # 144
    assert len(a.val_y) == n_val and len(a.train_y) == 1437 - n_val
    assert train_size("digits", None, 0.1) == len(a.train_y)
    assert train_size("synthetic", None, 0.25) == 512 - 128
    assert torch.equal(a.val_y, b.val_y)  # same examples, clean labels, any seed
    all_counts = Counter(clean.train_y.tolist())
    val_counts = Counter(a.val_y.tolist())
    for label, count in all_counts.items():
        assert abs(val_counts[label] - 0.1 * count) < 1
    assert torch.equal(a.test_x, clean.test_x) is False  # normalized with train-part stats
    assert torch.equal(a.test_y, clean.test_y)


@pytest.mark.parametrize("val_fraction", [0.0, 0.2])
def test_label_noise_flips_exact_count_to_other_classes(val_fraction: float) -> None:
    clean = load_dataset("synthetic", val_fraction=val_fraction)
    noisy = load_dataset("synthetic", val_fraction=val_fraction, label_noise=0.3, seed=3)
    changed = (clean.train_y != noisy.train_y).sum().item()
    assert changed == round(0.3 * len(clean.train_y))  # every flip moves to another class
    assert torch.equal(clean.test_y, noisy.test_y)
    if val_fraction:
        assert torch.equal(clean.val_y, noisy.val_y)
    again = load_dataset("synthetic", val_fraction=val_fraction, label_noise=0.3, seed=3)
    other = load_dataset("synthetic", val_fraction=val_fraction, label_noise=0.3, seed=4)
    assert torch.equal(noisy.train_y, again.train_y)
    assert not torch.equal(noisy.train_y, other.train_y)


def test_flip_labels_reaches_every_other_class() -> None:
    labels = np.zeros(1000, dtype=np.int64)
    flipped = flip_labels(labels, 0.5, 10, seed=0)
    assert (flipped != 0).sum() == 500
    assert set(flipped[flipped != 0].tolist()) == set(range(1, 10))
    assert (labels == 0).all()  # input untouched


def test_loaded_tensors_are_copies() -> None:
    data = load_dataset("synthetic", label_noise=0.0)
    data.train_y[:] = 0
    assert load_dataset("synthetic").train_y.sum().item() > 0


@pytest.mark.parametrize(
    "bad", [{"label_noise": 1.0}, {"val_fraction": 1.0}, {"val_fraction": 1e-6}]
)
def test_out_of_range_fractions_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        load_dataset("synthetic", **bad)


def test_unknown_dataset_is_named() -> None:
    with pytest.raises(ValueError, match="mnist"):
        load_dataset("mnist")


@needs_cifar
@pytest.mark.parametrize("where", [CIFAR_SUBSET, CIFAR_SUBSET / "cifar-10-batches-py"])
def test_cifar10_subset(where: Path) -> None:
    data = load_dataset("cifar10", str(where))
    assert data.train_x.shape == (5085, 3, 32, 32) and data.test_x.shape == (1017, 3, 32, 32)
    assert data.train_y[:8].tolist() == [6, 9, 9, 4, 1, 1, 2, 7]
    assert data.num_classes == 10 and data.train_y.dtype == torch.int64
    channel_means = data.train_x.mean(dim=(0, 2, 3))
    assert channel_means.abs().max().item() < 1e-3
    assert train_size("cifar10", str(where), 0.1) == 5085 - round(508.5)


def test_cifar10_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("cifar10", str(missing))


@needs_cifar
def test_cifar10_missing_batch_is_an_error(tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(CIFAR_SUBSET / "cifar-10-batches-py" / "test_batch", partial / "test_batch")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_dataset("cifar10", str(partial))


@pytest.mark.parametrize("inner", [False, True])
def test_cifar100_official_python_format(fake_cifar100: Path, inner: bool) -> None:
    where = fake_cifar100 / "cifar-100-python" if inner else fake_cifar100
    data = load_dataset("cifar100", str(where))
    assert data.train_x.shape == (96, 3, 32, 32) and data.test_x.shape == (40, 3, 32, 32)
    assert data.num_classes == 100  # fine labels, not the 20 superclasses
    assert data.train_y[:3].tolist() == [0, 7, 14] and data.train_y.dtype == torch.int64
    assert data.train_x.mean(dim=(0, 2, 3)).abs().max().item() < 1e-4
    assert train_size("cifar100", str(where)) == 96
    assert (
        train_size("cifar100", str(where), 0.25)
        == 72
        == len(load_dataset("cifar100", str(where), val_fraction=0.25).train_y)
    )


def test_cifar100_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train, test"):
        load_dataset("cifar100", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset_path"):
        load_dataset("cifar100")


def test_prepared_tensors_are_cached_per_device_and_noise_goes_on_a_copy() -> None:
    clean = load_dataset("synthetic", val_fraction=0.25)
    noisy = load_dataset("synthetic", val_fraction=0.25, label_noise=0.3, seed=1)
    # Images are uploaded once and shared read-only; labels are per trial.
    assert noisy.train_x is clean.train_x and noisy.test_x is clean.test_x
    assert noisy.train_y.data_ptr() != clean.train_y.data_ptr()
    assert clean.train_y_clean is None
    assert torch.equal(noisy.train_y_clean, clean.train_y)
    assert (noisy.train_y != clean.train_y).sum().item() == round(0.3 * 384)
    assert torch.equal(load_dataset("synthetic", val_fraction=0.25).train_y, clean.train_y)
    other_split = load_dataset("synthetic", val_fraction=0.5)
    assert other_split.train_x is not clean.train_x
