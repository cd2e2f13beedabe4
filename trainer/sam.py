"""Sharpness-Aware Minimization (Foret et al., ICLR 2021, Algorithm 1) as a wrapper.

SAM minimizes max_{‖ε‖₂ ≤ ρ} L(w + ε). One step on a batch is two passes:

    (1) g  = ∇L(w);     ε = ρ · g / ‖g‖₂;   w ← w + ε        -> SAM.first_step(g)
    (2) g' = ∇L(w + ε); w ← w − ε (exact);  base step with g' -> SAM.restore(), SAM.base_step()

The forward/backward passes are the training loop's job (see steps.sam_step); this
class only moves the weights and drives the base optimizer. All weight arithmetic
uses multi-tensor ``torch._foreach_*`` kernels over the list of parameters, so a
step costs a handful of kernel launches, not a Python loop with dict look-ups.

- ASAM (Kwon et al., ICML 2021) changes only how ε is computed from (w, g):
  :class:`ASAM` overrides :meth:`SAM._perturbation`.
- m-sharpness (one ε per micro-batch of m examples, second gradients averaged)
  changes only the loop: first_step/restore per micro-batch while the second
  gradients accumulate in ``.grad``, then :meth:`SAM.base_step` once.
- Learning-rate schedulers and checkpoints act on ``base_optimizer``: SAM keeps
  no state between steps (ε lives only inside one step), so the base optimizer's
  state dict (momentum buffers, Adam moments) is the whole optimizer state.
- Weight decay is the base optimizer's (SGD/Adam L2, AdamW decoupled), applied
  once per step at w; the ascent direction ε uses the loss gradient alone, as in
  the paper's and davda54's implementations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class SAM:
    """Wraps a constructed base optimizer; ``rho`` is the radius of the ε-ball."""

    def __init__(
        self, base_optimizer: torch.optim.Optimizer, rho: float, eps: float = 1e-12
    ) -> None:
        if rho <= 0:
            # rho = 0 is the base optimizer alone and must cost one pass, not two:
            # the loop never builds a SAM for it (docs/DESIGN.md §1).
            raise ValueError(f"SAM needs rho > 0, got {rho}; use the base optimizer for rho = 0")
        self.base_optimizer = base_optimizer
        self.rho = float(rho)
        # Guards ε = ρ·g/‖g‖ against ‖g‖ = 0 (e.g. a batch the model already fits
        # perfectly): ε becomes 0 instead of NaN.
        self.eps = eps
        # Built once: the hot path must not rebuild parameter lists every step.
        self.params: list[Tensor] = [
            p for group in base_optimizer.param_groups for p in group["params"] if p.requires_grad
        ]
        # One persistent copy of every parameter, reused each step. Restoring by
        # copying back is bitwise exact; subtracting ε is not ((w + ε) − ε ≠ w in
        # floating point when |ε| and |w| differ in magnitude).
        self._backup: list[Tensor] = [torch.empty_like(p) for p in self.params]
        self._perturbed: list[Tensor] = []
        self._saved: list[Tensor] = []

    @torch.no_grad()
    def first_step(self, grads: Sequence[Tensor | None]) -> None:
        """Step (1): climb from w to w + ε(w, g).

        ``grads`` is g = ∇L(w), one entry per :attr:`params` (None for a parameter
        the loss does not reach), as ``torch.autograd.grad`` returns it; it is
        consumed (overwritten). ``.grad`` is left alone: with m-sharpness it is
        accumulating the second gradients of the earlier micro-batches.
        """
        params, saved = self.params, self._backup
        present = [g for g in grads if g is not None]
        if len(present) < len(grads):  # rare: unused parameters keep ε = 0
            keep = [i for i, g in enumerate(grads) if g is not None]
            params, saved = [params[i] for i in keep], [saved[i] for i in keep]
        if params:
            torch._foreach_copy_(saved, params)  # remember w for the exact restore
            epsilon = self._perturbation(params, present)
            torch._foreach_add_(params, epsilon)  # w ← w + ε: "climb to the local maximum"
        self._perturbed, self._saved = params, saved

    @torch.no_grad()
    def restore(self) -> None:
        """w ← w − ε, done by copying back the saved w so it is bitwise exact."""
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, self._saved)
        self._perturbed, self._saved = [], []

    def base_step(self) -> None:
        """The base optimizer's update at w using the gradient g' taken at w + ε."""
        self.base_optimizer.step()

    def _perturbation(self, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """ε = ρ · g / (‖g‖₂ + eps), one global norm over all parameters.

        Scales ``grads`` in place (they are not needed afterwards), so ε costs no
        allocation. The norm is accumulated in fp32 even for bf16/fp16 gradients,
        as docs/DESIGN.md §1 asks under mixed precision.
        """
        scale = self.rho / (global_norm(grads) + self.eps)
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        return grads

    # -- the Optimizer surface the step uses -----------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base_optimizer.param_groups


class ASAM(SAM):
    """Adaptive SAM (Kwon et al., ICML 2021): ε = ρ · T_w² g / ‖T_w g‖₂.

    T_w = diag(|w| + η) makes the ε-ball scale-invariant: multiplying a filter by
    a (BN-absorbed) constant no longer changes its sharpness. Because |w| ≪ 1 for
    most weights, ‖ε‖ is much smaller than ρ, and ASAM's useful ρ is 10–40× SAM's,
    0.5–2.0 (docs/DESIGN.md §1; the paper's CIFAR runs use 0.5 and 1.0, SAM's 0.05).

    η = 0.01 is the authors' default. We add η to *every* parameter, biases and BN
    shifts included, rather than using T_w = 1 for biases as the authors' code
    does: with T = 1, a bias would be perturbed on SAM's scale while ρ is 10–40×
    SAM's, and with T = |w| alone a zero-initialized bias would never be perturbed.
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        rho: float,
        eta: float = 0.01,
        eps: float = 1e-12,
    ) -> None:
        super().__init__(base_optimizer, rho, eps)
        if eta < 0:
            raise ValueError(f"ASAM needs eta >= 0, got {eta}")
        self.eta = float(eta)

    def _perturbation(self, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """ρ · T² g / (‖T g‖₂ + eps) with T = |w| + η, computed in place in ``grads``."""
        t = torch._foreach_abs(params)
        torch._foreach_add_(t, self.eta)
        torch._foreach_mul_(grads, t)  # T g
        scale = self.rho / (global_norm(grads) + self.eps)
        torch._foreach_mul_(grads, t)  # T² g
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        return grads


def build_sam(variant: str, base_optimizer: torch.optim.Optimizer, rho: float) -> SAM:
    """``"sam"`` or ``"asam"`` around ``base_optimizer``."""
    if variant == "sam":
        return SAM(base_optimizer, rho)
    if variant == "asam":
        return ASAM(base_optimizer, rho)
    raise ValueError(f"unknown sam_variant {variant!r}; expected 'sam' or 'asam'")


def global_norm(tensors: list[Tensor]) -> Tensor:
    """‖concat(tensors)‖₂ = ‖(‖t₁‖, ‖t₂‖, …)‖₂, accumulated in at least fp32."""
    # bf16/fp16 gradients are widened to fp32; fp64 stays fp64. One device is
    # assumed (the trainer never splits a model across devices).
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    norms = torch._foreach_norm(tensors, 2, dtype=dtype)
    return torch.linalg.vector_norm(torch.stack(norms))
