"""The trainer's guarantees on CUDA (../shared/docs/GPU.md, item 1): run where a GPU is,
skipped elsewhere. The CPU tests of the same guarantees are beside them (test_batchnorm,
test_sam, test_steps, test_checkpoint); these run the CUDA path as the worker does
(bf16 autocast, channels_last, the fused base optimizer, cuDNN autotuning).

    python -m pytest -q tests/trainer/test_cuda.py        # on a GPU host
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.trainer.test_steps import DropoutNet
from trainer import DatasetConfig, EpochMetrics, SharpnessConfig, TrainConfig, TrialConfig, fit
from trainer.models import build_model
from trainer.sam import global_norm
from trainer.steps import build_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# cuBLAS's deterministic mode (read when its handle is made): the resume test asks for it
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def cuda_config(**changes) -> TrialConfig:
    config = TrialConfig(dataset=DatasetConfig(name="synthetic"), rho=0.5, device="cuda")
    return dataclasses.replace(config, **changes)


def batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_b" in k}


# docs/DESIGN.md §1 "What the trainer guarantees": BatchNorm running statistics are updated
# only by the unperturbed pass (here under bf16 autocast, channels_last, on the GPU)
def test_on_cuda_the_perturbed_pass_leaves_batchnorm_statistics_alone() -> None:
    torch.manual_seed(0)
    config = cuda_config()
    model = build_model("cnn", 3, 10, 32).cuda().to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    x = torch.randn(64, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device="cuda")
    step, _, options = build_step(model, config)
    assert options.bf16
    model.train()
    step(x, y)
    reference.train()
    with torch.no_grad(), options.autocast():
        reference(x)
    after, expected = batchnorm_buffers(model), batchnorm_buffers(reference)
    assert len(after) > 0
    for key in expected:
        assert torch.equal(after[key], expected[key]), key


# docs/DESIGN.md §1: the weights are restored bitwise before the base step (fused SGD on CUDA)
def test_on_cuda_the_weights_are_restored_bitwise_before_the_fused_base_step() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 10, 32).cuda()
    before = [p.detach().clone() for p in model.parameters()]
    step, base, options = build_step(model, cuda_config(rho=0.05))
    assert base.defaults.get("fused") is True
    seen: list[list[torch.Tensor]] = []
    original = base.step

    def spy(*args, **kwargs):
        seen.append([p.detach().clone() for p in model.parameters()])
        return original(*args, **kwargs)

    base.step = spy  # type: ignore[method-assign]
    step(torch.randn(32, 3, 32, 32, device="cuda"), torch.randint(0, 10, (32,), device="cuda"))
    assert all(torch.equal(a, b) for a, b in zip(seen[0], before, strict=True))


# docs/DESIGN.md §1: dropout sees the same mask in both passes (CUDA's generator rewound)
def test_on_cuda_both_passes_see_the_same_dropout_mask() -> None:
    torch.manual_seed(0)
    model = DropoutNet().cuda()
    step, _, _ = build_step(model, cuda_config(rho=0.05, train=TrainConfig(precision="fp32")))
    x, y = torch.randn(16, 8, device="cuda"), torch.randint(0, 3, (16,), device="cuda")
    step(x, y)
    first, second = model.masks
    assert torch.equal(first, second) and 0.3 < first.float().mean().item() < 0.7
    model.masks = []
    step(x, y)
    assert not torch.equal(model.masks[0], first)  # the generator moved on


# docs/DESIGN.md §1: the SAM norm is computed in fp32, whatever the gradients' dtype
def test_on_cuda_the_sam_norm_of_bf16_gradients_is_fp32() -> None:
    grads = [torch.ones(12_000, dtype=torch.bfloat16, device="cuda"),
             torch.ones(8_000, dtype=torch.bfloat16, device="cuda")]  # fmt: skip
    norm = global_norm(grads)
    assert norm.dtype == torch.float32 and norm.item() == pytest.approx(20_000**0.5, rel=1e-6)


def digits(tmp: Path | None, **train) -> TrialConfig:
    return TrialConfig(
        dataset=DatasetConfig(name="digits"),
        train=TrainConfig(epochs=3, lr=0.05, **train),
        sharpness=SharpnessConfig(samples=64, ascent_steps=2, hessian_iters=3),
        rho=0.05,
        batch_size=64,
        device="cuda",
        checkpoint_path=None if tmp is None else str(tmp / "run.pt"),
    )


class Interrupted(Exception):
    pass


# docs/DESIGN.md §1: a trial trains on CUDA in bf16 and learns; resumed from its checkpoint
# on the same device with deterministic kernels, it ends bitwise equal to an uninterrupted run
def test_on_cuda_a_trial_learns_and_resumes_bitwise_with_deterministic_kernels(
    tmp_path: Path,
) -> None:
    torch.use_deterministic_algorithms(True)
    try:
        whole = fit(digits(tmp_path / "whole"))

        def stop(metrics: EpochMetrics) -> None:
            if metrics.epoch == 1:
                raise Interrupted

        with pytest.raises(Interrupted):
            fit(digits(tmp_path / "parts"), on_epoch=stop)
        resumed = fit(digits(tmp_path / "parts"))
    finally:
        torch.use_deterministic_algorithms(False)
    assert whole.device == "cuda" and whole.precision == "bf16"
    assert whole.test_accuracy > 0.8
    assert resumed.resumed_from_epoch == 1
    for a, b in zip(resumed.history, whole.history, strict=True):
        assert (a.train_loss, a.test_loss, a.test_accuracy) == (
            b.train_loss,
            b.test_loss,
            b.test_accuracy,
        )
    a = torch.load(tmp_path / "whole" / "run.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / "run.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# docs/deploy.md "Packing": the probe reads the real allocator, and a capped allocator
# raises CUDA's out-of-memory, which the worker tells from other errors
def test_on_cuda_the_memory_probe_and_cap_are_real() -> None:
    from worker.device import is_out_of_memory
    from worker.packing import CudaProbe

    probe = CudaProbe()
    probe.free()
    probe.reset_peak()
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    assert probe.peak() >= 256 * 2**20 and probe.total() > probe.peak()
    del block
    probe.cap(512 * 2**20)
    try:
        with pytest.raises(torch.OutOfMemoryError) as caught:
            torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
        assert is_out_of_memory(caught.value)
    finally:
        probe.cap(None)
        probe.free()
