"""Checkpoints: stop after k epochs, resume, and get exactly the uninterrupted run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from trainer import (
    DatasetConfig,
    EpochMetrics,
    ModelConfig,
    SharpnessConfig,
    TrainConfig,
    TrialConfig,
    fit,
)
from trainer.checkpoint import load_checkpoint

TIMING = ("seconds", "wall_seconds", "samples_per_second", "resumed_from_epoch")


class Interrupted(Exception):
    pass


def everything(config_dir: Path, dataset_dir: Path) -> TrialConfig:
    """Every source of state at once: dropout, augmentation, m-sharpness, momentum,
    a cosine schedule with warmup, label noise and a validation split."""
    return TrialConfig(
        dataset=DatasetConfig(
            name="cifar100",
            path=str(dataset_dir),
            label_noise=0.2,
            val_fraction=0.25,
            augment="crop_flip_cutout",
        ),
        model=ModelConfig(name="wrn", depth=10, width=1, dropout=0.3),
        train=TrainConfig(
            epochs=3,
            lr=0.05,
            nesterov=True,
            warmup_epochs=1,
            schedule="cosine",
            grad_clip=5.0,
            label_smoothing=0.1,
        ),
        sharpness=SharpnessConfig(samples=32, ascent_steps=2, hessian_iters=3),
        rho=0.1,
        m=8,
        batch_size=16,
        seed=5,
        checkpoint_path=str(config_dir / "run.pt"),
    )


def without_timing(d: dict) -> dict:
    out = {k: v for k, v in d.items() if k not in TIMING and k != "history"}
    out["history"] = [{k: v for k, v in m.items() if k != "seconds"} for m in d.get("history", [])]
    return out


def stop_at(epoch: int):
    def on_epoch(metrics: EpochMetrics) -> None:
        if metrics.epoch == epoch:
            raise Interrupted

    return on_epoch


# docs/DESIGN.md §1 "What the trainer guarantees": a run resumed from its checkpoint (model,
# base-optimizer state, scheduler, every RNG) ends bitwise equal to an uninterrupted one
def test_resumed_run_equals_the_uninterrupted_one_exactly(
    tmp_path: Path, fake_cifar100: Path
) -> None:
    whole = everything(tmp_path / "whole", fake_cifar100)
    parts = everything(tmp_path / "parts", fake_cifar100)
    reference = fit(whole)
    with pytest.raises(Interrupted):
        fit(parts, on_epoch=stop_at(2))
    assert load_checkpoint(parts.checkpoint_path, parts)["epoch"] == 2
    seen: list[int] = []
    resumed = fit(parts, on_epoch=lambda m: seen.append(m.epoch))
    assert seen == [3] and resumed.resumed_from_epoch == 2 and reference.resumed_from_epoch is None
    # Bitwise: every metric, the sharpness measures, the history, the lr per epoch...
    assert without_timing(resumed.to_dict()) == without_timing(reference.to_dict())
    assert [m.lr for m in resumed.history] == [m.lr for m in reference.history]
    # ...and the final weights, BN statistics and momentum buffers.
    a = torch.load(whole.checkpoint_path, weights_only=True)
    b = torch.load(parts.checkpoint_path, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(
            state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"]
        )
    assert resumed.train_clean_accuracy is not None and resumed.sharpness is not None


def test_a_finished_checkpoint_returns_the_result_without_training(
    tmp_path: Path, fake_cifar100: Path
) -> None:
    full = everything(tmp_path, fake_cifar100)
    config = dataclasses.replace(full, train=dataclasses.replace(full.train, epochs=1))
    first = fit(config)
    calls: list[int] = []
    again = fit(config, on_epoch=lambda m: calls.append(m.epoch))
    assert calls == [] and again.resumed_from_epoch == 1
    assert without_timing(again.to_dict()) == without_timing(first.to_dict())


def test_a_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(epochs=1),
        sharpness=SharpnessConfig(samples=0),
        checkpoint_path=str(tmp_path / "c.pt"),
    )
    fit(config)
    with pytest.raises(ValueError, match=r"train\.lr: 0\.1 -> 0\.2"):
        fit(dataclasses.replace(config, train=TrainConfig(lr=0.2, epochs=1)))
    # Where it is stored and run may change (e.g. another worker, another device).
    moved = tmp_path / "moved.pt"
    moved.write_bytes(Path(config.checkpoint_path).read_bytes())
    assert fit(dataclasses.replace(config, checkpoint_path=str(moved))).resumed_from_epoch == 1


# docs/faults.md "How a trial runs": a checkpoint after every epoch (model, base-optimizer state,
# scheduler, RNG states)
def test_checkpoint_contents_and_atomic_write(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "deep" / "c.pt"
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(epochs=2),
        sharpness=SharpnessConfig(samples=0),
        checkpoint_path=str(path),
    )
    with pytest.raises(Interrupted):
        fit(config, on_epoch=stop_at(1))
    state = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "history", "config", "epoch"} <= set(state)
    assert {"torch", "cuda", "numpy", "python", "generators"} <= set(state["rng"])
    assert state["config"]["checkpoint_path"] == str(path) and state["epoch"] == 1
    # A write that dies half-way leaves the previous checkpoint and no temporary file.
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fit(config)  # resumes, trains epoch 2, fails to save it
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]


# trainer/checkpoint.py CheckpointWriter: the checkpoint is written by a background thread
# while the next epoch trains, from a copy (the resumed-run test above fails if the copy
# aliased the live weights), and fit returns only once the last one is on disk
def test_checkpoints_are_written_while_the_next_epoch_trains(
    tmp_path: Path, monkeypatch, forwards
) -> None:
    import threading
    import time

    import trainer.checkpoint as checkpoint

    real_save, writes = checkpoint.save_checkpoint, []

    def slow_save(path, state) -> None:
        seen = len(forwards)
        deadline = time.monotonic() + 30
        while len(forwards) == seen and time.monotonic() < deadline and state["epoch"] < 3:
            time.sleep(0.01)  # until the training thread runs a forward of the next epoch
        writes.append((state["epoch"], threading.current_thread().name, len(forwards) > seen))
        real_save(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    path = tmp_path / "c.pt"
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(epochs=3),
        sharpness=SharpnessConfig(samples=0),
        checkpoint_path=str(path),
    )
    result = fit(config)
    assert [(e, name) for e, name, _ in writes] == [(e, "checkpoint-writer") for e in (1, 2, 3)]
    assert all(trained for epoch, _, trained in writes if epoch < 3)  # the next epoch ran
    assert load_checkpoint(path, config)["epoch"] == 3 and result.epochs == 3
