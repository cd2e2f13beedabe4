"""SAM's update on a problem whose gradients are known in closed form."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainer.config import TrialConfig
from trainer.loop import build_step
from trainer.models import build_model
from trainer.sam import SAM

RHO = 0.3


def quadratic() -> tuple[torch.Tensor, nn.ParameterList]:
    """L(w) = ½ wᵀAw with A symmetric positive definite, w split over two tensors
    so the test also checks that ε uses one global norm, not one per tensor."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a = m @ m.T + 5 * torch.eye(5, dtype=torch.float64)
    w = torch.randn(5, generator=gen, dtype=torch.float64)
    return a, nn.ParameterList([nn.Parameter(w[:3].clone()), nn.Parameter(w[3:].clone())])


def loss_of(a: torch.Tensor, params: nn.ParameterList) -> torch.Tensor:
    w = torch.cat(list(params))
    return 0.5 * w @ a @ w


def test_base_optimizer_gets_gradient_at_perturbed_point_and_exact_weights() -> None:
    a, params = quadratic()
    w0 = torch.cat([p.detach().clone() for p in params])
    saved = [p.detach().clone() for p in params]
    base = torch.optim.SGD(params, lr=1.0)  # w_new = w − g': the update exposes g'
    sam = SAM(base, rho=RHO)

    seen: dict[str, list[torch.Tensor]] = {}
    original_step = base.step

    def spy_step(*args, **kwargs):
        seen["weights"] = [p.detach().clone() for p in params]
        seen["grads"] = [p.grad.detach().clone() for p in params]
        return original_step(*args, **kwargs)

    base.step = spy_step

    loss_of(a, params).backward()
    sam.first_step()
    g = a @ w0
    eps = RHO * g / g.norm()
    torch.testing.assert_close(torch.cat(list(params)).detach(), w0 + eps, rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in params)  # step (2) starts from clean grads

    loss_of(a, params).backward()
    sam.second_step()

    # Restored bitwise before the base step, not merely close.
    assert all(torch.equal(w, s) for w, s in zip(seen["weights"], saved, strict=True))
    g_prime = a @ (w0 + eps)
    torch.testing.assert_close(torch.cat(seen["grads"]), g_prime, rtol=1e-12, atol=1e-12)
    expected = w0 - 1.0 * g_prime
    torch.testing.assert_close(torch.cat(list(params)).detach(), expected, rtol=1e-12, atol=1e-12)


def test_zero_gradient_gives_zero_perturbation_not_nan() -> None:
    param = nn.Parameter(torch.ones(4))
    sam = SAM(torch.optim.SGD([param], lr=0.1), rho=0.05)
    param.grad = torch.zeros(4)
    sam.first_step()
    assert torch.equal(param.detach(), torch.ones(4))


def test_params_without_gradient_are_skipped() -> None:
    used, unused = nn.Parameter(torch.tensor([3.0, 4.0])), nn.Parameter(torch.tensor([7.0]))
    sam = SAM(torch.optim.SGD([used, unused], lr=0.1), rho=0.5)
    used.grad = torch.tensor([3.0, 4.0])  # ‖g‖ = 5, so ε = 0.5 · (0.6, 0.8)
    sam.first_step()
    torch.testing.assert_close(used.detach(), torch.tensor([3.3, 4.4]))
    assert torch.equal(unused.detach(), torch.tensor([7.0]))
    used.grad = torch.zeros(2)
    sam.restore()
    assert torch.equal(used.detach(), torch.tensor([3.0, 4.0]))


def test_state_dict_is_the_base_optimizers() -> None:
    param = nn.Parameter(torch.ones(2))
    base = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    sam = SAM(base, rho=0.05)
    assert sam.state_dict() == base.state_dict()
    assert sam.param_groups is base.param_groups


def count_passes(model: nn.Module) -> dict[str, int]:
    counts = {"forward": 0, "backward": 0}
    model.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    first = next(model.parameters())
    first.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))
    return counts


def test_rho_zero_is_the_bare_base_optimizer_with_one_pass_per_step() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 8)
    reference = copy.deepcopy(model)
    config = TrialConfig(dataset="synthetic", rho=0.0, lr=0.05, momentum=0.9, nesterov=True)
    step, _ = build_step(model, config)
    counts = count_passes(model)
    bare = torch.optim.SGD(
        reference.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        step(x, y)
        bare.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        bare.step()
    assert counts == {"forward": 3, "backward": 3}
    for p, q in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_sam_step_makes_two_passes() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 8)
    step, _ = build_step(model, TrialConfig(dataset="synthetic", rho=0.05))
    counts = count_passes(model)
    step(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    assert counts == {"forward": 2, "backward": 2}


def test_rho_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rho"):
        SAM(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), rho=0.0)
