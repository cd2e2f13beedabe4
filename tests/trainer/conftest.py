from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run trainer tests on one intra-op thread, restored afterwards.

    The test models are tiny, so a second thread buys nothing, and OpenMP threads
    that spin-wait for a core another process holds made the digits test 6× slower
    (45 s against 7 s) when other suites ran alongside on a 2-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def forwards(monkeypatch) -> list[bool]:
    """Every forward pass of the model fit() builds, by its training mode: sum() of it is
    the number of training-mode forwards (the passes a run spent)."""
    import trainer.loop as loop
    from trainer.models import build_model

    seen: list[bool] = []

    def counted(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_hook(lambda mod, inp, out: seen.append(mod.training))
        return model

    monkeypatch.setattr(loop, "build_model", counted)
    return seen


def write_fake_cifar100(directory: Path, n_train: int = 96, n_test: int = 40) -> Path:
    """A tiny CIFAR-100 in the official python format, in ``directory/cifar-100-python``.

    Images are uint8 noise around a per-class colour, so a model can learn something;
    labels cycle over 10 of the 100 fine classes (as in the real files, the
    superclass labels are there too and must be ignored).
    """
    rng = np.random.default_rng(0)
    root = directory / "cifar-100-python"
    root.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = (np.arange(n) % 10) * 7  # classes 0, 7, ..., 63: num_classes is still 100
        colour = rng.integers(0, 256, size=(100, 3, 1, 1))[fine]
        images = np.clip(colour + rng.normal(0, 40, size=(n, 3, 32, 32)), 0, 255)
        batch = {
            b"data": images.astype(np.uint8).reshape(n, 3072),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return root


@pytest.fixture(scope="session")
def fake_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory that *contains* ``cifar-100-python`` (what a study would name)."""
    directory = tmp_path_factory.mktemp("cifar100")
    write_fake_cifar100(directory)
    return directory
