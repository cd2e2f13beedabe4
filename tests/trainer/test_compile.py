"""train.compile: the training step under torch.compile, everything else as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer import DatasetConfig, EpochMetrics, SharpnessConfig, TrainConfig, TrialConfig, fit
from trainer.checkpoint import load_checkpoint


class Interrupted(Exception):
    pass


def config(compile_: bool, checkpoint: Path | None) -> TrialConfig:
    return TrialConfig(
        dataset=DatasetConfig(name="digits"),
        train=TrainConfig(epochs=2, lr=0.05, compile=compile_),
        sharpness=SharpnessConfig(samples=64, ascent_steps=2, hessian_iters=3),
        rho=0.05,
        batch_size=200,  # 1437 examples: 7 full batches and a partial one each epoch
        checkpoint_path=None if checkpoint is None else str(checkpoint),
    )


def stop_after_first(metrics: EpochMetrics) -> None:
    if metrics.epoch == 1:
        raise Interrupted


# docs/spec.md "train.compile": the compiled step trains the same trial (the same numbers
# up to floating-point reassociation), its checkpoint has the eager model's keys (a
# compiled run resumes, and an eager one could read it), and the sharpness measurement's
# double backward, which compile cannot run, stays eager
def test_a_compiled_trial_trains_resumes_and_measures_like_the_eager_one(
    tmp_path: Path, monkeypatch
) -> None:
    compiled_modules: list[torch.nn.Module] = []
    real_compile = torch.compile

    def recording(model, *args, **kwargs):
        compiled_modules.append(model)
        return real_compile(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", recording)
    eager = fit(config(False, None))
    assert compiled_modules == []
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        fit(config(True, ckpt), on_epoch=stop_after_first)
    saved = load_checkpoint(ckpt, config(True, ckpt))
    assert saved is not None and saved["epoch"] == 1
    assert not any("_orig_mod" in key for key in saved["model"])
    compiled = fit(config(True, ckpt))
    assert len(compiled_modules) == 2  # the interrupted process's and the resumed one's
    assert compiled.resumed_from_epoch == 1 and compiled.epochs == 2
    assert compiled.passes == eager.passes
    for a, b in zip(compiled.history, eager.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-3)
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-3)
    assert abs(compiled.test_accuracy - eager.test_accuracy) <= 2 / 360  # 360 test digits
    assert compiled.sharpness == pytest.approx(eager.sharpness, rel=0.05, abs=1e-4)
