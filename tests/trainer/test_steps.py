"""Step functions: m-sharpness, dropout masks, clipping, label smoothing, bf16, NHWC."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import DatasetConfig, TrainConfig, TrialConfig
from trainer.models import build_model
from trainer.steps import build_step

RHO = 0.2
PLAIN_SGD = TrialConfig(
    dataset=DatasetConfig(name="synthetic"),
    train=TrainConfig(lr=1.0, momentum=0.0, weight_decay=0.0),
    rho=RHO,
)


def linear64(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 3).double()


def batch64(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=gen)


def grad_at(model: nn.Module, params: list[torch.Tensor], x, y, shift=None) -> list[torch.Tensor]:
    """∇ CE(model(x), y) at w + shift, by a functional call (model untouched)."""
    names = [n for n, _ in model.named_parameters()]
    values = [p.detach().clone().requires_grad_() for p in params]
    moved = values if shift is None else [v + s for v, s in zip(values, shift, strict=True)]
    loss = F.cross_entropy(
        torch.func.functional_call(model, dict(zip(names, moved, strict=True)), (x,)), y
    )
    return list(torch.autograd.grad(loss, values))


def sam_reference(model: nn.Module, x, y, m: int, lr: float = 1.0) -> list[torch.Tensor]:
    """w − lr · Σᵢ (nᵢ/n) ∇L_i(w + ε_i), ε_i = ρ ∇L_i(w)/‖∇L_i(w)‖, written out."""
    params = [p.detach().clone() for p in model.parameters()]
    total = [torch.zeros_like(p) for p in params]
    for xi, yi in zip(x.split(m), y.split(m), strict=True):
        g = grad_at(model, params, xi, yi)
        norm = torch.sqrt(sum((t**2).sum() for t in g))
        eps = [RHO * t / (norm + 1e-12) for t in g]
        g_prime = grad_at(model, params, xi, yi, eps)
        total = [a + len(xi) / len(x) * b for a, b in zip(total, g_prime, strict=True)]
    return [p - lr * t for p, t in zip(params, total, strict=True)]


# docs/spec.md "The study spec": `search.m`: one epsilon per micro-batch of m examples, second
# gradients averaged
@pytest.mark.parametrize("n,m", [(6, 2), (5, 2), (6, 6)])
def test_m_sharpness_matches_a_written_out_reference(n: int, m: int) -> None:
    """One ε per micro-batch, g' averaged by micro-batch size, one base step.

    (5, 2) is an epoch's last partial batch: micro-batches 2, 2 and a remainder of 1,
    weighted 0.4, 0.4, 0.2. float64, agreement to 1e-12 (summation order differs).
    """
    model = linear64()
    x, y = batch64(n)
    expected = sam_reference(model, x, y, m)
    step, _, _ = build_step(model, dataclasses.replace(PLAIN_SGD, m=m, batch_size=6))
    step(x, y)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)


# docs/spec.md "The study spec": `search.m`: one epsilon per micro-batch; m = B is plain SAM
def test_m_equal_to_batch_size_is_plain_sam_bitwise() -> None:
    """m = B takes the single-micro-batch path, which is plain SAM's: so weights, BN
    buffers and the logged loss are bitwise equal (not merely close). A smaller m
    really does something else."""
    torch.manual_seed(0)
    models = {m: build_model("cnn", 1, 10, 8) for m in (None, 16, 4)}
    for model in models.values():
        model.load_state_dict(models[None].state_dict())
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen))
    ]
    logged = {}
    for m, model in models.items():
        step, _, _ = build_step(
            model,
            TrialConfig(dataset=DatasetConfig(name="synthetic"), rho=0.05, m=m, batch_size=16),
        )
        logged[m] = [step(x, y)[0] for x, y in batches * 3]
    plain, same, smaller = (models[m].state_dict() for m in (None, 16, 4))
    assert all(torch.equal(plain[k], same[k]) for k in plain)
    assert logged[None] == logged[16]
    assert not torch.equal(plain["head.weight"], smaller["head.weight"])


# docs/DESIGN.md §1 "What the trainer guarantees": logged loss and accuracy come from the
# unperturbed pass (plain SAM, and with m-sharpness)
@pytest.mark.parametrize("m", [None, 2])
def test_m_sharpness_logs_the_unperturbed_loss_of_the_whole_batch(m: int | None) -> None:
    model = linear64()
    x, y = batch64(6)
    expected = F.cross_entropy(model(x), y).item()
    step, _, _ = build_step(model, dataclasses.replace(PLAIN_SGD, m=m, batch_size=6))
    loss, correct = step(x, y)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert 0 <= correct.item() <= 6


@pytest.mark.parametrize("bad,match", [({"m": 5}, "divide"), ({"m": 0}, "m must")])
def test_m_must_divide_the_batch_size(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(PLAIN_SGD, batch_size=16, **bad).validate()


class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(8, 64), nn.Dropout(0.5), nn.Linear(64, 3)
        self.masks: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.fc1(x))
        self.masks.append(h.detach() == 0)
        return self.fc2(h)


# docs/DESIGN.md §1 "What the trainer guarantees": dropout sees the same mask in both passes
@pytest.mark.parametrize("m", [None, 4])
def test_both_sam_passes_see_the_same_dropout_mask(m: int | None) -> None:
    torch.manual_seed(0)
    model = DropoutNet()
    step, _, _ = build_step(
        model, TrialConfig(dataset=DatasetConfig(name="synthetic"), rho=0.05, m=m, batch_size=8)
    )
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    step(x, y)
    first = model.masks
    assert len(first) == (2 if m is None else 4)
    for unperturbed, perturbed in zip(first[::2], first[1::2], strict=True):
        assert torch.equal(unperturbed, perturbed)
    assert 0.3 < first[0].float().mean().item() < 0.7  # the mask really drops units
    model.masks = []
    step(x, y)  # the next step draws new masks: the generator moved on
    assert not torch.equal(model.masks[0], first[0])


def test_rng_after_a_sam_step_is_where_one_forward_leaves_it() -> None:
    torch.manual_seed(0)
    model = DropoutNet()
    step, _, _ = build_step(model, TrialConfig(dataset=DatasetConfig(name="synthetic"), rho=0.05))
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    start = torch.get_rng_state()
    model(x)
    after_one_forward = torch.get_rng_state()
    torch.set_rng_state(start)
    step(x, y)
    assert torch.equal(torch.get_rng_state(), after_one_forward)


def spy_on_base_step(optimizer: torch.optim.Optimizer) -> list[list[torch.Tensor]]:
    seen: list[list[torch.Tensor]] = []
    original = optimizer.step

    def step(*args, **kwargs):
        seen.append([p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]])
        return original(*args, **kwargs)

    optimizer.step = step
    return seen


# docs/spec.md "The study spec": grad_clip: max L2 norm of the gradient the base optimizer uses
# (SAM's second)
@pytest.mark.parametrize("rho", [0.0, RHO])
def test_clipping_acts_on_the_gradient_the_base_optimizer_uses(rho: float) -> None:
    """The base step receives g'·c/(‖g'‖ + 1e-6) (clip_grad_norm_'s guard), g' the
    gradient at w + ε under SAM and at w for ρ = 0. float64, to 1e-12."""
    model = linear64()
    x, y = batch64(6)
    params = [p.detach().clone() for p in model.parameters()]
    g = grad_at(model, params, x, y)
    if rho:
        norm = torch.sqrt(sum((t**2).sum() for t in g))
        g = grad_at(model, params, x, y, [rho * t / (norm + 1e-12) for t in g])
    clip = 1e-3
    g_norm = torch.sqrt(sum((t**2).sum() for t in g))
    assert g_norm > 10 * clip  # the clip is active
    expected = [t * clip / (g_norm + 1e-6) for t in g]
    config = dataclasses.replace(
        PLAIN_SGD, rho=rho, train=dataclasses.replace(PLAIN_SGD.train, grad_clip=clip)
    )
    step, base, _ = build_step(model, config)
    seen = spy_on_base_step(base)
    step(x, y)
    for got, want in zip(seen[0], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


# docs/spec.md "The study spec": label_smoothing applies to the training loss only
@pytest.mark.parametrize("rho", [0.0, RHO])
def test_label_smoothing_trains_on_smoothed_ce_but_logs_plain_ce(rho: float) -> None:
    model = linear64()
    reference = copy.deepcopy(model)
    x, y = batch64(6)
    step, base, _ = build_step(
        model,
        dataclasses.replace(
            PLAIN_SGD, rho=rho, train=dataclasses.replace(PLAIN_SGD.train, label_smoothing=0.2)
        ),
    )
    seen = spy_on_base_step(base)
    loss, _ = step(x, y)
    assert loss.item() == pytest.approx(F.cross_entropy(reference(x), y).item(), rel=1e-12)
    if rho == 0:
        smoothed = F.cross_entropy(reference(x), y, label_smoothing=0.2)
        expected = torch.autograd.grad(smoothed, list(reference.parameters()))
        for got, want in zip(seen[0], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


# docs/spec.md "The study spec": precision bf16 is autocast; weights and gradients stay fp32
@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_bf16_autocast_path_runs_on_cpu_with_fp32_weights_and_grads(rho: float) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 8)
    dtypes: list[torch.dtype] = []
    model.head.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"), train=TrainConfig(precision="bf16"), rho=rho
    )
    step, base, options = build_step(model, config)
    seen = spy_on_base_step(base)
    loss, _ = step(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    assert options.bf16 and set(dtypes) == {torch.bfloat16}
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(g.dtype == torch.float32 for g in seen[0])
    assert all(p.dtype == torch.float32 for p in model.parameters())
