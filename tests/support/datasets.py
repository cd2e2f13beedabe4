"""Datasets the tests write: a tiny CIFAR-10 in the official python format, and a
crafted data_batch_1 whose unpickling runs code (what a hostile data root would hold)."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest

from samsweep.core.admission import FILE_FORMATS
from tests.support.paths import SHARED_DATA

SUBSET = SHARED_DATA / "cifar10-subset" / "cifar-10-batches-py"
needs_subset = pytest.mark.skipif(not SUBSET.is_dir(), reason="shared CIFAR-10 subset absent")
BATCHES = "cifar-10-batches-py"
FILES = (*FILE_FORMATS["cifar10"].train_files, FILE_FORMATS["cifar10"].test_file)


def write_cifar10(directory: Path, rows: int = 4) -> Path:
    """A tiny CIFAR-10 in the official python format, directly in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in FILES:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, rows)],
            b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(rows)],
        }
        (directory / name).write_bytes(pickle.dumps(batch))
    return directory


class Payload:
    """Unpickling this calls `fn(*args)`: what a hostile data_batch_1 would do."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payload(how: str, marker: Path) -> Payload:
    return {
        "os.system": Payload(os.system, f"touch {shlex.quote(str(marker))}"),
        "builtins.exec": Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.open": Payload(open, str(marker), "w"),
    }[how]


def crafted_batch(marker: Path, how: str = "os.system", where: str = "data") -> bytes:
    """A data_batch_1 that creates `marker` when unpickled by plain pickle, padded to the
    size of an image (as an attacker would: the API refuses a file too small to hold one,
    and the payload must reach the parser and the worker)."""
    evil = payload(how, marker)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [0, 1],
        b"data": np.zeros((2, 3072), np.uint8),
        b"filenames": [b"a.png", b"b.png"],
        b"padding": bytes(3072),
    }
    if where == "top":
        return pickle.dumps((evil, bytes(3072)))
    if where == "object array":  # inside an array, as numpy pickles object arrays
        batch[b"data"] = np.array([evil, 1], dtype=object)
    else:
        batch[b"data"] = evil
    return pickle.dumps(batch)
