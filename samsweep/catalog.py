"""Checks of a spec against the deployment: data root, training-set size, grid maximum.

The API runs these before creating anything, without importing torch: training-set
sizes are known for the built-in datasets and counted from the files for cifar10.
`tests/test_catalog.py` checks the numbers against what the trainer actually loads.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from samsweep.spec import StudySpec

# Training examples before the validation split; must match trainer/data.py.
BUILTIN_TRAIN_SIZES = {"digits": 1437, "synthetic": 512}


@dataclass(frozen=True)
class FileFormat:
    """The official CIFAR "python version" layout of one dataset."""

    dirname: str  # what the official archive unpacks to
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes


FILE_FORMATS = {
    "cifar10": FileFormat(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        b"labels",
    ),
    "cifar100": FileFormat("cifar-100-python", ("train",), "test", b"fine_labels"),
}


@dataclass
class SpecError(Exception):
    """A spec that is valid JSON but cannot run here; `field` is dotted (search.batch_size)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def resolve_data_path(data_dir: Path, path: str) -> Path:
    """Resolve `path` under `data_dir`; refuse anything that leaves the data root."""
    root = data_dir.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise SpecError("dataset.path", f"{path!r} resolves outside the data root")
    return target


def dataset_dir(name: str, path: Path) -> Path:
    """Accept the directory of the files itself or its parent holding the official one."""
    official = path / FILE_FORMATS[name].dirname
    return official if official.is_dir() else path


@lru_cache(maxsize=32)
def _count_rows(fmt: FileFormat, directory: Path, mtimes: tuple[float, ...]) -> int:
    del mtimes  # part of the cache key only: a replaced file is counted again
    total = 0
    for name in fmt.train_files:
        with open(directory / name, "rb") as f:
            total += len(pickle.load(f, encoding="bytes")[fmt.label_key])
    return total


def train_size(spec: StudySpec, data_dir: Path) -> int:
    """Training examples a trial sees, after the validation split."""
    ds = spec.dataset
    if ds.name in BUILTIN_TRAIN_SIZES:
        n = BUILTIN_TRAIN_SIZES[ds.name]
    else:
        fmt = FILE_FORMATS[ds.name]
        directory = dataset_dir(ds.name, resolve_data_path(data_dir, ds.path or ""))
        files = (*fmt.train_files, fmt.test_file)
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise SpecError(
                "dataset.path",
                f"{ds.path!r} is not a {ds.name} python-format directory "
                f"(missing {', '.join(missing)})",
            )
        mtimes = tuple((directory / f).stat().st_mtime for f in fmt.train_files)
        n = _count_rows(fmt, directory, mtimes)
    return n - round(ds.val_fraction * n)


def check_spec(spec: StudySpec, data_dir: Path, max_grid_trials: int) -> None:
    """Raise SpecError naming the field if this spec cannot run on this deployment."""
    if spec.n_trials > max_grid_trials:
        raise SpecError(
            "search",
            f"the grid has {spec.n_trials} trials (cells x seeds); "
            f"this deployment accepts at most {max_grid_trials}",
        )
    n = train_size(spec, data_dir)
    for i, b in enumerate(spec.search.batch_size):
        if b > n:
            raise SpecError(
                f"search.batch_size.{i}",
                f"batch size {b} is larger than the training set ({n} examples)",
            )
