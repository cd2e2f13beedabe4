"""Datasets as whole tensors: train / optional validation / test, already normalized.

Every dataset here fits in memory (CIFAR-10/100 are 150 MB as uint8), so it is
read once per process (``_load_raw`` is cached) and prepared (split, normalized,
float) once per (name, path, val_fraction, device) (``_prepare`` is cached): a GPU
worker uploads a dataset once, not once per trial. Trials share those image
tensors read-only (nothing in the trainer writes to them; augmentation makes new
batches); labels are per-trial copies with the trial's noise applied. No
DataLoader, no worker processes: batches are tensor slices.

What a trial sees is a pure function of (name, path, val_fraction, label_noise, seed):

- Validation hold-out: ``round(val_fraction * n_train)`` examples, stratified by
  class, drawn with a FIXED seed (``VAL_SPLIT_SEED``), so every trial of a study
  (every ρ, every seed) selects on the same validation set.
- Label noise (symmetric, Foret et al. Table 4): exactly
  ``round(label_noise * n)`` of the n remaining training labels, chosen without
  replacement with the trial's seed, each moved to a different class drawn
  uniformly from the other C − 1. Validation and test labels stay clean.
- Normalization: per-channel mean/std of the (post-split) training images.

Training-set sizes before the validation split: digits 1437, synthetic 512,
cifar10 the number of rows in data_batch_1..5 (50 000 for the full download),
cifar100 the number of rows of ``train``'s fine labels (50 000).

CIFAR's official "python version" files are pickles, and unpickling runs whatever a
file names. They are read by a restricted unpickler (``trainer/unpickle.py``) that
builds only dicts, lists, tuples, bytes, str, numbers and numpy arrays, then checked:
a dict with ``b"data"`` of N×3072 uint8 rows and N integer labels in [0, num_classes).
Any failure is a ``DatasetError`` whose message names the file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainer.unpickle import DatasetError, restricted_load

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")
ON_DISK = ("cifar10", "cifar100")  # need dataset_path
VAL_SPLIT_SEED = 0  # fixed: the validation set must not move with the trial seed
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_FILES = ("train", "test")


@dataclass(frozen=True)
class Dataset:
    """Float images N×C×H×W (normalized), int64 labels, all on one device."""

    train_x: Tensor
    train_y: Tensor  # with label noise applied, if any
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    val_x: Tensor | None = None
    val_y: Tensor | None = None
    train_y_clean: Tensor | None = None  # the original labels when noise was applied

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]


@dataclass(frozen=True)
class _Raw:
    """A dataset as read from disk: numpy, read-only, shared by all trials."""

    train_x: np.ndarray  # N×C×H×W, uint8 or float
    train_y: np.ndarray  # int64
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int


def load_dataset(
    name: str,
    path: str | None = None,
    *,
    val_fraction: float = 0.0,
    label_noise: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Dataset:
    """The dataset ``name`` prepared for one trial (see the module docstring)."""
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
    prepared = _prepare(name, _path_key(name, path), val_fraction, device_key(device))
    clean = prepared.train_y
    noisy = None
    if label_noise > 0:
        flipped = flip_labels(clean.cpu().numpy(), label_noise, prepared.num_classes, seed)
        noisy = torch.tensor(flipped, device=clean.device)
    return Dataset(
        train_x=prepared.train_x,
        train_y=clean.clone() if noisy is None else noisy,  # a copy: trials may not share
        test_x=prepared.test_x,
        test_y=prepared.test_y.clone(),
        num_classes=prepared.num_classes,
        val_x=prepared.val_x,
        val_y=None if prepared.val_y is None else prepared.val_y.clone(),
        train_y_clean=None if noisy is None else clean.clone(),
    )


@functools.lru_cache(maxsize=2)
def _prepare(name: str, path: str | None, val_fraction: float, device: str) -> Dataset:
    """Split, normalize and upload once per process and device; clean labels."""
    raw = _load_raw(name, path)
    train_idx, val_idx = stratified_holdout(raw.train_y, val_count(len(raw.train_y), val_fraction))
    train_x = torch.tensor(raw.train_x[train_idx], device=device).float()
    # Statistics from the images actually trained on, never from val or test.
    var, mean = torch.var_mean(train_x, dim=(0, 2, 3), keepdim=True, correction=0)
    std = var.sqrt().clamp_min(1e-8)

    def images(x: np.ndarray) -> Tensor:
        return (torch.tensor(x, device=device).float() - mean) / std

    def labels(y: np.ndarray) -> Tensor:
        return torch.tensor(y, dtype=torch.int64, device=device)

    has_val = len(val_idx) > 0
    return Dataset(
        train_x=(train_x - mean) / std,
        train_y=labels(raw.train_y[train_idx]),
        test_x=images(raw.test_x),
        test_y=labels(raw.test_y),
        num_classes=raw.num_classes,
        val_x=images(raw.train_x[val_idx]) if has_val else None,
        val_y=labels(raw.train_y[val_idx]) if has_val else None,
    )


def train_size(name: str, path: str | None = None, val_fraction: float = 0.0) -> int:
    """Number of training examples a trial trains on (after the validation split)."""
    n = len(_load_raw(name, _path_key(name, path)).train_y)
    return n - val_count(n, val_fraction)


def clear_cache() -> None:
    """Drop the prepared (uploaded) datasets: a process that shares its GPU with others
    frees the device memory between trials; the raw arrays stay cached in host memory."""
    _prepare.cache_clear()


def device_key(device: str | torch.device) -> str:
    """One name per device: "cuda" is the current CUDA device, so "cuda" and "cuda:0"
    share one cached upload instead of holding two copies of the dataset."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _path_key(name: str, path: str | None) -> str | None:
    # Built-in datasets ignore the path, so it must not split their cache entries.
    return path if name in ON_DISK else None


def val_count(n: int, val_fraction: float) -> int:
    """``round(val_fraction * n)`` (Python's round), refusing empty or total splits."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    count = round(val_fraction * n)
    if val_fraction > 0 and not 0 < count < n:
        raise ValueError(f"val_fraction {val_fraction} of {n} examples leaves an empty split")
    return count


def stratified_holdout(
    labels: np.ndarray, count: int, seed: int = VAL_SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): ``count`` examples held out in class proportion.

    Per-class quotas use the largest-remainder method so they sum to exactly
    ``count``; indices come back sorted so the training order is the file order.
    """
    classes, counts = np.unique(labels, return_counts=True)
    quota = count * counts / len(labels)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(take - quota, kind="stable")[: count - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    held = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    val_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.ones(len(labels), dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep), val_idx


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """A copy with exactly round(fraction · n) labels moved to a different class.

    A uniform shift in 1..C−1 (mod C) picks the new class uniformly among the other
    C − 1, so a flipped label never equals its original.
    """
    out = np.array(labels, dtype=np.int64)
    count = round(fraction * len(out))
    if count == 0:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(out), size=count, replace=False)
    out[idx] = (out[idx] + rng.integers(1, num_classes, size=count)) % num_classes
    return out


# -- raw loaders, one read per process -----------------------------------------


@functools.lru_cache(maxsize=4)
def _load_raw(name: str, path: str | None) -> _Raw:
    if name == "digits":
        raw = _digits()
    elif name == "synthetic":
        raw = _synthetic()
    elif name in ON_DISK:
        if path is None:
            raise FileNotFoundError(f"{name} needs dataset_path: a directory of its python files")
        raw = _cifar10(Path(path)) if name == "cifar10" else _cifar100(Path(path))
    else:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    for array in (raw.train_x, raw.train_y, raw.test_x, raw.test_y):
        array.flags.writeable = False  # shared across trials: copies only
    return raw


def _digits() -> _Raw:
    """scikit-learn's bundled 8×8 digits (1797 images, values 0..16): 1437 / 360."""
    from sklearn.datasets import load_digits  # lazy: only this loader needs sklearn
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]  # N×1×8×8
    y = digits.target.astype(np.int64)
    # Fixed split, independent of the trial seed, so test accuracy is comparable.
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
    return _Raw(x_tr, y_tr, x_te, y_te, num_classes=10)


def _synthetic() -> _Raw:
    """10 classes of 1×8×8 images: a fixed random template per class plus noise.

    Noise σ = 2 against unit-variance templates keeps it learnable but not instant.
    """
    rng = np.random.default_rng(1234)  # fixed: the same data in every process
    templates = rng.normal(size=(10, 1, 8, 8))
    y = rng.permutation(np.arange(640) % 10)
    x = (templates[y] + 2.0 * rng.normal(size=(640, 1, 8, 8))).astype(np.float32)
    return _Raw(x[:512], y[:512].astype(np.int64), x[512:], y[512:].astype(np.int64), 10)


def _cifar10(path: Path) -> _Raw:
    """The official "python version" batches: pickles, read by a restricted unpickler."""
    directory = _cifar_directory(path)
    batches = [_read_cifar_batch(directory / name) for name in CIFAR_FILES]
    train_x = np.concatenate([x for x, _ in batches[:5]])
    train_y = np.concatenate([y for _, y in batches[:5]])
    return _Raw(train_x, train_y, batches[5][0], batches[5][1], num_classes=10)


def _cifar100(path: Path) -> _Raw:
    """The official "python version": ``train`` and ``test``, 100 fine labels.

    The 20 coarse (superclass) labels are ignored: CIFAR-100 results, SAM's
    included, are on the fine labels.
    """
    directory = _cifar_directory(path, "cifar-100-python", CIFAR100_FILES)
    train_x, train_y = _read_cifar_batch(directory / "train", b"fine_labels", 100)
    test_x, test_y = _read_cifar_batch(directory / "test", b"fine_labels", 100)
    return _Raw(train_x, train_y, test_x, test_y, num_classes=100)


def _cifar_directory(
    path: Path, subdirectory: str = "cifar-10-batches-py", files: tuple[str, ...] = CIFAR_FILES
) -> Path:
    """``path`` itself or ``path/subdirectory``, whichever holds every file."""
    for candidate in (path, path / subdirectory):
        if all((candidate / name).is_file() for name in files):
            return candidate
    raise FileNotFoundError(
        f"no CIFAR files at '{path}': expected {', '.join(files)} in it "
        f"or in '{path / subdirectory}'"
    )


def _read_cifar_batch(
    file: Path, label_key: bytes = b"labels", num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """One batch file, checked: DatasetError naming the file if anything is off."""
    batch = restricted_load(file)

    def refuse(message: str) -> DatasetError:
        return DatasetError(f"{file}: {message}")

    if not isinstance(batch, dict):
        raise refuse(f"not a CIFAR batch: a {type(batch).__name__}, expected a dict")
    for key in (b"data", label_key):
        if key not in batch:
            raise refuse(f"not a CIFAR batch: no {key!r} key")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = f"{data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
        raise refuse(f"b'data' is a {what}, expected uint8 rows")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise refuse(f"b'data' has shape {data.shape}, expected N x 3072 (32x32 RGB rows)")
    if len(data) == 0:
        raise refuse("holds no images")
    labels = batch[label_key]
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise refuse(f"{label_key!r} must be a list of ints")
    if len(labels) != len(data):
        raise refuse(f"{len(labels)} labels for {len(data)} images")
    bad = [i for i, v in enumerate(labels) if not 0 <= v < num_classes]
    if bad:
        raise refuse(
            f"{label_key!r} holds {len(bad)} labels outside [0, {num_classes}), "
            f"the first {labels[bad[0]]} at row {bad[0]}"
        )
    y = np.array(labels, dtype=np.int64)
    # Each row is the R, G, B planes of a 32×32 image, 1024 bytes each.
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), y
