"""Sharpness-Aware Minimization (Foret et al., ICLR 2021, Algorithm 1) as a wrapper.

SAM minimizes max_{‖ε‖₂ ≤ ρ} L(w + ε). One step on a batch is two passes:

    (1) g  = ∇L(w);     ε = ρ · g / ‖g‖₂;   w ← w + ε        -> SAM.first_step()
    (2) g' = ∇L(w + ε); w ← w − ε (exact);  base step with g' -> SAM.second_step()

The forward/backward passes are the training loop's job (see loop.sam_step); this
class only moves the weights and drives the base optimizer. All weight arithmetic
uses multi-tensor ``torch._foreach_*`` kernels over the list of parameters, so a
step costs a handful of kernel launches, not a Python loop with dict look-ups.

Extension points, deliberately kept small:
- ASAM (Kwon et al., 2021) changes only how ε is computed from (w, g): override
  :meth:`SAM._perturbation`.
- m-sharpness (one ε per micro-batch of m examples, second gradients averaged)
  changes only the loop: call first_step/restore per micro-batch, accumulate g',
  then :meth:`SAM.base_step` once. Hence ``restore`` and ``base_step`` are public.
- Learning-rate schedulers and checkpoints act on ``base_optimizer``: SAM keeps
  no state between steps (ε lives only inside one step), so the base optimizer's
  state dict (momentum buffers, Adam moments) is the whole optimizer state.
"""

from __future__ import annotations

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
            # the loop never builds a SAM for it (DESIGN.md §1).
            raise ValueError(f"SAM needs rho > 0, got {rho}; use the base optimizer for rho = 0")
        self.base_optimizer = base_optimizer
        self.rho = float(rho)
        # Guards ε = ρ·g/‖g‖ against ‖g‖ = 0 (e.g. a batch the model already fits
        # perfectly): ε becomes 0 instead of NaN.
        self.eps = eps
        self._params: list[Tensor] = [
            p for group in base_optimizer.param_groups for p in group["params"]
        ]
        # One persistent copy of every parameter, reused each step. Restoring by
        # copying back is bitwise exact; subtracting ε is not ((w + ε) − ε ≠ w in
        # floating point when |ε| and |w| differ in magnitude).
        self._backup: list[Tensor] = [torch.empty_like(p) for p in self._params]
        self._perturbed: list[Tensor] = []
        self._saved: list[Tensor] = []

    @torch.no_grad()
    def first_step(self) -> None:
        """Step (1): from g = ∇L(w) in ``.grad``, climb to w + ε; clears the grads."""
        pairs = [
            (p, b) for p, b in zip(self._params, self._backup, strict=True) if p.grad is not None
        ]
        if not pairs:
            return
        params = [p for p, _ in pairs]
        grads = [p.grad for p in params]
        self._perturbed, self._saved = params, [b for _, b in pairs]
        torch._foreach_copy_(self._saved, params)  # remember w for the exact restore
        epsilon = self._perturbation(params, grads)  # ε(w) = ρ g / ‖g‖₂
        torch._foreach_add_(params, epsilon)  # w ← w + ε: "climb to the local maximum"
        # Step (2) needs a fresh gradient at w + ε, not g accumulated with it.
        self.base_optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self) -> None:
        """Step (2), after g' = ∇L(w + ε) is in ``.grad``: restore w, base step with g'."""
        self.restore()
        self.base_step()

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
        """ε = ρ · g / (‖g‖₂ + eps), with one global norm over all parameters.

        The norm is accumulated in fp32 even for bf16/fp16 gradients, as DESIGN.md §1
        asks under mixed precision. ASAM would return
        ρ · w² · g / ‖|w| · g‖₂ here instead.
        """
        norm = self._global_norm(grads)
        scale = self.rho / (norm + self.eps)
        return torch._foreach_mul(grads, scale.to(grads[0].dtype))

    @staticmethod
    def _global_norm(tensors: list[Tensor]) -> Tensor:
        """‖concat(tensors)‖₂ = ‖(‖t₁‖, ‖t₂‖, …)‖₂, accumulated in at least fp32."""
        # bf16/fp16 gradients are widened to fp32; fp64 stays fp64. One device is
        # assumed (the trainer never splits a model across devices).
        dtype = torch.promote_types(tensors[0].dtype, torch.float32)
        norms = torch._foreach_norm(tensors, 2, dtype=dtype)
        return torch.linalg.vector_norm(torch.stack(norms))

    # -- the Optimizer surface the loop and checkpoints use --------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base_optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
