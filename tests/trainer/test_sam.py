"""SAM's update on a problem whose gradients are known in closed form."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainer.config import DatasetConfig, TrainConfig, TrialConfig
from trainer.models import build_model
from trainer.sam import ASAM, SAM, build_sam, global_norm
from trainer.steps import build_step

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


# docs/DESIGN.md §1 "What the trainer guarantees": the weights are restored bitwise before the base
# step; docs/spec.md "The study spec": weight decay is applied by the base optimizer, never by
# SAM's ascent
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_base_optimizer_gets_gradient_at_perturbed_point_and_exact_weights(wd: float) -> None:
    a, params = quadratic()
    w0 = torch.cat([p.detach().clone() for p in params])
    saved = [p.detach().clone() for p in params]
    # w_new = w − (g' + wd·w): the update exposes g'
    base = torch.optim.SGD(params, lr=1.0, weight_decay=wd)
    sam = SAM(base, rho=RHO)

    seen: dict[str, list[torch.Tensor]] = {}
    original_step = base.step

    def spy_step(*args, **kwargs):
        seen["weights"] = [p.detach().clone() for p in params]
        seen["grads"] = [p.grad.detach().clone() for p in params]
        return original_step(*args, **kwargs)

    base.step = spy_step

    sam.first_step(torch.autograd.grad(loss_of(a, params), params))
    g = a @ w0
    eps = RHO * g / g.norm()
    torch.testing.assert_close(torch.cat(list(params)).detach(), w0 + eps, rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in params)  # step (2)'s gradient starts clean

    loss_of(a, params).backward()
    sam.restore()
    sam.base_step()

    # Restored bitwise before the base step, not merely close.
    assert all(torch.equal(w, s) for w, s in zip(seen["weights"], saved, strict=True))
    g_prime = a @ (w0 + eps)
    torch.testing.assert_close(torch.cat(seen["grads"]), g_prime, rtol=1e-12, atol=1e-12)
    expected = w0 - 1.0 * (g_prime + wd * w0)  # decay once, at w
    torch.testing.assert_close(torch.cat(list(params)).detach(), expected, rtol=1e-12, atol=1e-12)


def test_zero_gradient_gives_zero_perturbation_not_nan() -> None:
    param = nn.Parameter(torch.ones(4))
    sam = SAM(torch.optim.SGD([param], lr=0.1), rho=0.05)
    sam.first_step([torch.zeros(4)])
    assert torch.equal(param.detach(), torch.ones(4))


def test_params_without_gradient_are_skipped() -> None:
    used, unused = nn.Parameter(torch.tensor([3.0, 4.0])), nn.Parameter(torch.tensor([7.0]))
    sam = SAM(torch.optim.SGD([used, unused], lr=0.1), rho=0.5)
    sam.first_step([torch.tensor([3.0, 4.0]), None])  # ‖g‖ = 5, so ε = 0.5 · (0.6, 0.8)
    torch.testing.assert_close(used.detach(), torch.tensor([3.3, 4.4]))
    assert torch.equal(unused.detach(), torch.tensor([7.0]))
    sam.restore()
    assert torch.equal(used.detach(), torch.tensor([3.0, 4.0]))


# SAM keeps no state of its own: its param_groups are the base optimizer's, so the
# lr schedule and the checkpoint (trainer/loop.py saves the base optimizer's state;
# tests/trainer/test_checkpoint.py resumes exactly) act on the base optimizer
def test_param_groups_are_the_base_optimizers() -> None:
    param = nn.Parameter(torch.ones(2))
    base = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    sam = SAM(base, rho=0.05)
    assert sam.param_groups is base.param_groups


def count_passes(model: nn.Module) -> dict[str, int]:
    counts = {"forward": 0, "backward": 0}
    model.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    first = next(model.parameters())
    first.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))
    return counts


# docs/DESIGN.md §1 "What the trainer guarantees": rho = 0 is one forward/backward per step
def test_rho_zero_is_the_bare_base_optimizer_with_one_pass_per_step() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 8)
    reference = copy.deepcopy(model)
    config = TrialConfig(
        dataset=DatasetConfig(name="synthetic"),
        train=TrainConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        rho=0.0,
    )
    step, _, _ = build_step(model, config)
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


# benchmarks/README.md "A SAM step": two forward/backward passes per SAM step (2.0x the floor)
def test_sam_step_makes_two_passes() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 8)
    step, _, _ = build_step(model, TrialConfig(dataset=DatasetConfig(name="synthetic"), rho=0.05))
    counts = count_passes(model)
    step(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    assert counts == {"forward": 2, "backward": 2}


# docs/DESIGN.md §1 "What the trainer guarantees": the SAM norm is computed in fp32.
def test_the_norm_of_bf16_gradients_is_accumulated_in_fp32() -> None:
    """Summed in bf16 (8 mantissa bits), 20 000 squares of 1 would stall below 20 000."""
    grads = [torch.ones(12_000, dtype=torch.bfloat16), torch.ones(8_000, dtype=torch.bfloat16)]
    norm = global_norm(grads)
    assert norm.dtype == torch.float32
    assert norm.item() == pytest.approx(20_000**0.5, rel=1e-6)


def test_rho_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rho"):
        SAM(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), rho=0.0)


# docs/spec.md "The study spec": `search.sam_variant: asam`
def test_asam_perturbation_matches_a_hand_computation() -> None:
    """ε = ρ · T² g / ‖T g‖ with T = |w| + η, on numbers small enough to check by hand.

    Equal up to float64 rounding (rtol 1e-13): the same formula in another order.
    The norm includes ASAM's eps = 1e-12 guard (4.8e-13 relative here: not negligible).
    """
    rho, eta = 0.5, 0.01
    weight = nn.Parameter(torch.tensor([0.5, -2.0], dtype=torch.float64))
    bias = nn.Parameter(torch.tensor([0.0], dtype=torch.float64))  # zero: only η perturbs it
    asam = ASAM(torch.optim.SGD([weight, bias], lr=0.1), rho=rho, eta=eta)
    g = [1.0, 1.0, 3.0]
    t = [0.5 + eta, 2.0 + eta, 0.0 + eta]
    norm = sum((ti * gi) ** 2 for ti, gi in zip(t, g, strict=True)) ** 0.5 + 1e-12
    expected_eps = [rho * ti * ti * gi / norm for ti, gi in zip(t, g, strict=True)]
    asam.first_step(
        [torch.tensor(g[:2], dtype=torch.float64), torch.tensor(g[2:], dtype=torch.float64)]
    )
    got = torch.cat(
        [weight.detach() - torch.tensor([0.5, -2.0], dtype=torch.float64), bias.detach()]
    )
    torch.testing.assert_close(
        got, torch.tensor(expected_eps, dtype=torch.float64), rtol=1e-13, atol=1e-15
    )
    asam.restore()
    assert weight.tolist() == [0.5, -2.0] and bias.tolist() == [0.0]


def test_asam_without_eta_is_davda54s_adaptive_formula() -> None:
    torch.manual_seed(0)
    w, g = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    param = nn.Parameter(w.clone())
    ASAM(torch.optim.SGD([param], lr=0.1), rho=1.0, eta=0.0).first_step([g.clone()])
    # davda54/sam, adaptive=True: e_w = ρ · w² · g / ‖|w| · g‖
    expected = 1.0 * w.pow(2) * g / (w.abs() * g).norm()
    torch.testing.assert_close(param.detach() - w, expected, rtol=1e-12, atol=1e-14)


def test_asam_is_scale_invariant_where_sam_is_not() -> None:
    """Kwon et al.'s motivation: scaling w by c > 0 (and g by 1/c, as for a layer
    followed by BatchNorm) scales ASAM's ε by c (η = 0), i.e. the same relative move."""
    w, g = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([0.5, 0.1, -0.4])
    eps = {}
    for c in (1.0, 10.0):
        param = nn.Parameter(w * c)
        ASAM(torch.optim.SGD([param], lr=0.1), rho=1.0, eta=0.0).first_step([g / c])
        eps[c] = param.detach() - w * c
    torch.testing.assert_close(eps[10.0], 10.0 * eps[1.0])


def test_build_sam_variants() -> None:
    base = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    assert type(build_sam("sam", base, 0.05)) is SAM
    assert isinstance(build_sam("asam", base, 1.0), ASAM)
    with pytest.raises(ValueError, match="gsam"):
        build_sam("gsam", base, 0.05)


def test_first_step_with_explicit_grads_keeps_dot_grad_and_skips_unused() -> None:
    used, unused = nn.Parameter(torch.tensor([3.0, 4.0])), nn.Parameter(torch.tensor([7.0]))
    sam = SAM(torch.optim.SGD([used, unused], lr=0.1), rho=0.5)
    used.grad = torch.tensor([9.0, 9.0])  # an accumulating g' must survive first_step(grads)
    sam.first_step([torch.tensor([3.0, 4.0]), None])
    torch.testing.assert_close(used.detach(), torch.tensor([3.3, 4.4]))
    assert torch.equal(used.grad, torch.tensor([9.0, 9.0])) and unused.item() == 7.0
    sam.restore()
    assert used.tolist() == [3.0, 4.0]
