"""The perturbed pass must not touch BatchNorm's running statistics."""

from __future__ import annotations

import copy

import torch
from torch import nn

from trainer.config import DatasetConfig, TrialConfig
from trainer.models import build_model
from trainer.steps import build_step, frozen_batchnorm_stats


def batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k
    }


# docs/DESIGN.md §1 "What the trainer guarantees": BatchNorm running statistics are updated only by
# the unperturbed pass
def test_sam_step_updates_running_stats_exactly_like_one_forward() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 3, 10, 32)
    reference = copy.deepcopy(model)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    step, _, _ = build_step(model, TrialConfig(dataset=DatasetConfig(name="synthetic"), rho=0.5))
    model.train()
    step(x, y)
    reference.train()
    with torch.no_grad():
        reference(x)  # one unperturbed forward in train mode
    after, expected = batchnorm_buffers(model), batchnorm_buffers(reference)
    assert after.keys() == expected.keys() and len(after) > 0
    for key in expected:
        assert torch.equal(after[key], expected[key]), key


def test_frozen_stats_normalize_with_batch_statistics_and_restore_flags() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 8).train()
    x = torch.randn(16, 1, 8, 8)
    before = batchnorm_buffers(model)
    with torch.no_grad(), frozen_batchnorm_stats(model):
        frozen_out = model(x)
    assert all(torch.equal(v, before[k]) for k, v in batchnorm_buffers(model).items())
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        assert torch.equal(frozen_out, model(x))  # same train-mode normalization
