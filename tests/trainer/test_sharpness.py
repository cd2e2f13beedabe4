"""Sharpness measures on losses whose answer is known, and their side effects."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer import sharpness

EIGENVALUES = torch.tensor([10.0, 4.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)


def quadratic(at_minimum: bool) -> tuple[torch.Tensor, list[torch.Tensor], sharpness.Objective]:
    """L(w) = ½ wᵀAw with a known spectrum, w split over two tensors."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(EIGENVALUES) @ q.T
    w = (
        torch.zeros(6, dtype=torch.float64)
        if at_minimum
        else torch.randn(6, generator=gen).double()
    )
    params = [nn.Parameter(w[:4].clone()), nn.Parameter(w[4:].clone())]

    def objective():
        v = torch.cat(params)
        yield 0.5 * v @ a @ v

    return a, params, objective


# docs/spec.md "The study spec": sharpness: the top Hessian eigenvalue by power iteration
@pytest.mark.parametrize("at_minimum", [True, False])
def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic(at_minimum: bool) -> None:
    _, params, objective = quadratic(at_minimum)
    estimate = sharpness.top_hessian_eigenvalue(objective, params, iters=20)
    assert estimate == pytest.approx(10.0, rel=0.01)


# docs/spec.md "The study spec": sharpness: the loss increase at the worst point of a rho-ball
def test_loss_increase_of_a_quadratic_at_its_minimum_is_half_rho_squared_lambda() -> None:
    """max_{‖ε‖≤ρ} ½εᵀAε = ½ρ²λ_max, approached from below by the ascent."""
    _, params, objective = quadratic(at_minimum=True)
    rho = 0.1
    value = sharpness.loss_increase(objective, params, rho=rho, steps=5)
    exact = 0.5 * rho**2 * 10.0
    assert 0.95 * exact <= value <= exact * (1 + 1e-9)


def test_loss_increase_away_from_the_minimum_is_bracketed_and_restores_weights() -> None:
    """For convex ½wᵀAw: ρ‖g‖ ≤ max_{‖ε‖≤ρ} L(w+ε) − L(w) ≤ ρ‖g‖ + ½ρ²λ_max."""
    a, params, objective = quadratic(at_minimum=False)
    before = [p.detach().clone() for p in params]
    rho = 0.05
    value = sharpness.loss_increase(objective, params, rho=rho, steps=3)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    g_norm = (a @ torch.cat(before)).norm().item()
    assert rho * g_norm <= value <= rho * g_norm + 0.5 * rho**2 * 10.0


def test_chunked_hessian_vector_product_equals_the_whole_batch_one() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 4).double()
    x, y = torch.randn(300, 5, dtype=torch.float64), torch.randint(0, 4, (300,))
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]

    def chunks():
        for s in range(0, 300, 128):
            yield F.cross_entropy(model(x[s : s + 128]), y[s : s + 128], reduction="sum") / 300

    whole = sharpness.hessian_vector_product(lambda: [F.cross_entropy(model(x), y)], params, v)
    split = sharpness.hessian_vector_product(chunks, params, v)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_measure_leaves_model_weights_buffers_and_mode_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(144, 3),
    )
    model.train()
    model(torch.randn(32, 1, 8, 8))  # give BN non-trivial running statistics
    snapshot = copy.deepcopy(model.state_dict())
    x, y = torch.randn(300, 1, 8, 8), torch.randint(0, 3, (300,))
    sharp, eig = sharpness.measure(model, x, y, rho=0.05, steps=3, iters=5)
    assert sharp is not None and sharp >= 0 and eig is not None and eig > 0
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(after[k], snapshot[k]) for k in snapshot)
    assert all(p.grad is None for p in model.parameters())
    again = sharpness.measure(model, x, y, rho=0.05, steps=3, iters=5)
    assert again == (sharp, eig)  # eval mode + fixed seeds: deterministic


# docs/spec.md "The study spec": sharpness on a fixed subset, the same for every trial
def test_subset_is_fixed_and_independent_of_everything_but_its_size() -> None:
    a = sharpness.sharpness_subset(1000, 100)
    torch.manual_seed(123)  # the global generator must not matter
    assert torch.equal(a, sharpness.sharpness_subset(1000, 100))
    assert len(set(a.tolist())) == 100
    assert len(sharpness.sharpness_subset(50, 512)) == 50
