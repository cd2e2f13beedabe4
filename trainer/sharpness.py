"""Sharpness of the final weights: worst-case loss increase and top Hessian eigenvalue.

Both are measured on a fixed subset of the training set, the same for every trial
of a dataset (``SUBSET_SEED`` is a constant, not the trial seed), in eval mode (BN
running statistics, no dropout, so the loss is a deterministic function of w), in
fp32 whatever the training precision, with plain cross-entropy against the labels
the model was trained on (noisy ones included: sharpness is a property of the
minimum the training objective found). Label smoothing is left out so that cells
that differ in it are still comparable.

- ``loss_increase``: max_{‖ε‖₂ ≤ ρ} L(w + ε) − L(w), estimated from below by
  normalized gradient ascent (ε ← ε + (ρ/steps)·∇L/‖∇L‖, then projected onto the
  ρ-ball), the measure of Foret et al. 2021 (§4, "m-sharpness") and of Keskar et
  al. 2017 with an L2 ball. The result is the largest loss seen along the way
  minus L(w), hence ≥ 0. A tiny random start (‖ε₀‖ = 10⁻³ρ, fixed seed) gives the
  ascent a direction even at an exact stationary point. For a quadratic
  ½ wᵀAw at its minimum the value approaches ½ρ²λ_max.
- ``top_hessian_eigenvalue``: power iteration with Hessian-vector products
  (Pearlmutter 1994: Hv = ∇(∇L · v), a double backward), as in Yao et al.'s
  PyHessian (2020): at most ``iters`` iterations, stopping early, like PyHessian,
  once the estimate moves by less than ``HESSIAN_TOL`` (relative). It converges
  to the eigenvalue of largest magnitude; at a minimum (H positive semi-definite)
  that is λ_max. One HVP costs about three training passes, and the early stop
  typically halves the count (a digits CNN: 8 iterations, 0.02% from the limit).

The loss is summed over chunks of ``CHUNK`` examples so memory stays bounded with
double backward; in eval mode the chunks are independent, so this is exact.
The weights are restored bitwise afterwards (copies, not subtraction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.sam import global_norm

SUBSET_SEED = 0  # the same examples for every trial: sharpness comparable across cells
DIRECTION_SEED = 1  # random start / power-iteration vector, also trial-independent
CHUNK = 256  # examples per forward during measurement
HESSIAN_TOL = 1e-3  # PyHessian's default relative tolerance

# Yields losses whose sum is the objective (one per chunk), built at the current w.
Objective = Callable[[], Iterable[Tensor]]


def sharpness_subset(n: int, samples: int) -> Tensor:
    """Indices of ``min(samples, n)`` training examples, fixed for a given n."""
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n, generator=generator)[: min(samples, n)]


def measure(
    model: nn.Module, x: Tensor, y: Tensor, *, rho: float, steps: int, iters: int
) -> tuple[float | None, float | None]:
    """(loss increase in the ρ-ball, top Hessian eigenvalue) of ``model`` on (x, y).

    Non-finite values are reported as None (the callers store JSON).
    """
    was_training = model.training
    model.eval()
    params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]

    def objective() -> Iterable[Tensor]:
        for start in range(0, len(x), CHUNK):
            xb, yb = x[start : start + CHUNK], y[start : start + CHUNK]
            yield F.cross_entropy(model(xb), yb, reduction="sum") / len(x)

    try:
        sharp = loss_increase(objective, params, rho, steps)
        eig = top_hessian_eigenvalue(objective, params, iters)
    finally:
        model.train(was_training)
    return _finite(sharp), _finite(eig)


def loss_increase(objective: Objective, params: list[Tensor], rho: float, steps: int) -> float:
    """max over the ascent path of L(w + ε) − L(w), ‖ε‖ ≤ ρ (module docstring)."""
    saved = [p.detach().clone() for p in params]
    epsilon = _random_direction(params, 1e-3 * rho)
    try:
        with torch.no_grad():
            base = _value(objective)
        best = base
        for _ in range(steps):
            _set(params, saved, epsilon)
            value, grads = _value_and_grad(objective, params)
            best = max(best, value)
            with torch.no_grad():
                scale = (rho / steps) / (global_norm(grads) + 1e-12)
                torch._foreach_add_(epsilon, torch._foreach_mul(grads, scale))
                norm = global_norm(epsilon)  # project back onto the ρ-ball if outside
                torch._foreach_mul_(epsilon, torch.clamp(rho / (norm + 1e-12), max=1.0))
        _set(params, saved, epsilon)
        with torch.no_grad():
            best = max(best, _value(objective))
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, saved)  # bitwise restore
    return best - base


def top_hessian_eigenvalue(
    objective: Objective, params: list[Tensor], iters: int, tol: float = HESSIAN_TOL
) -> float:
    """Rayleigh quotient vᵀHv after at most ``iters`` power iterations v ← Hv/‖Hv‖."""
    v = _random_direction(params, 1.0)
    eigenvalue = None
    for _ in range(iters):
        hv = hessian_vector_product(objective, params, v)
        with torch.no_grad():
            previous = eigenvalue
            eigenvalue = float(sum((a * b).sum() for a, b in zip(v, hv, strict=True)))
            norm = global_norm(hv).item()
            if norm == 0.0:  # H v = 0: v is in the null space; nothing larger was found
                break
            if previous is not None and abs(eigenvalue - previous) <= tol * abs(eigenvalue):
                break
            v = list(torch._foreach_div(hv, norm))
    return float(eigenvalue or 0.0)


def hessian_vector_product(
    objective: Objective, params: list[Tensor], v: list[Tensor]
) -> list[Tensor]:
    """H v = ∇(∇L · v), summed over the objective's chunks (double backward)."""
    total = [torch.zeros_like(p) for p in params]
    for loss in objective():
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        dot = sum((g * u).sum() for g, u in zip(grads, v, strict=True) if g is not None)
        if not isinstance(dot, Tensor) or not dot.requires_grad:
            continue  # the gradient does not depend on w here: zero curvature
        hv = torch.autograd.grad(dot, params, allow_unused=True)
        with torch.no_grad():
            for t, h in zip(total, hv, strict=True):
                if h is not None:
                    t.add_(h)
    return total


def _value(objective: Objective) -> float:
    return math.fsum(loss.item() for loss in objective())


def _value_and_grad(objective: Objective, params: list[Tensor]) -> tuple[float, list[Tensor]]:
    value, total = 0.0, [torch.zeros_like(p) for p in params]
    for loss in objective():
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for t, g in zip(total, grads, strict=True):
                if g is not None:
                    t.add_(g)
        value += loss.item()
    return value, total


@torch.no_grad()
def _set(params: list[Tensor], saved: list[Tensor], epsilon: list[Tensor]) -> None:
    """w ← saved + ε."""
    torch._foreach_copy_(params, saved)
    torch._foreach_add_(params, epsilon)


def _random_direction(params: list[Tensor], norm: float) -> list[Tensor]:
    """A seeded Gaussian direction of global L2 norm ``norm``, drawn on the CPU so
    that it is the same on every device."""
    generator = torch.Generator().manual_seed(DIRECTION_SEED)
    vectors = [
        torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params
    ]
    scale = norm / global_norm(vectors).item()
    return list(torch._foreach_mul(vectors, scale))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
