"""One optimizer step on a batch: the base step (one pass) and the SAM step (two).

Read top to bottom: the options a step runs with, the base optimizer, the two step
functions, then the helpers they rely on (frozen BatchNorm statistics, replayed
dropout masks, clipping). Everything that does not change between steps (the BN
module list, the autocast setting) is worked out once in
:meth:`StepOptions.for_model`, not on the hot path.

What the paper leaves implicit, decided here (docs/DESIGN.md §1):
- Logged loss/accuracy come from the unperturbed pass, and the logged loss is
  plain cross-entropy even when the training objective uses label smoothing, so
  that train losses are comparable across trials (evaluation is plain CE too).
- Gradient clipping acts on the gradient the base optimizer uses: the second
  gradient g' under SAM (the first is normalized anyway), the only one at ρ = 0.
- bf16 autocast wraps the forwards (and the loss); backward runs outside it, as
  PyTorch recommends; parameters, gradients and SAM's norm stay fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainer.config import TrialConfig
from trainer.sam import SAM, build_sam
from trainer.schedule import effective_lr

OPTIMIZERS = ("sgd", "adam", "adamw")  # the base optimizers (SAM wraps any of them)

# One training step on a batch (x, y): returns the loss (a 0-d tensor) and the
# number of correct predictions, both from the unperturbed forward pass.
StepFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class StepOptions:
    """How a step runs; defaults are a plain fp32 step without extras."""

    m: int | None = None  # m-sharpness micro-batch size (SAM only); None = whole batch
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    device: str = "cpu"
    bf16: bool = False
    batchnorms: tuple[_BatchNorm, ...] = ()  # frozen during SAM's perturbed pass

    @classmethod
    def for_model(cls, model: nn.Module, config: TrialConfig) -> StepOptions:
        return cls(
            m=config.m,
            grad_clip=config.train.grad_clip,
            label_smoothing=config.train.label_smoothing,
            device=config.device,
            bf16=config.precision == "bf16",
            batchnorms=batchnorm_modules(model),
        )

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def build_base_optimizer(model: nn.Module, config: TrialConfig) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW at the effective lr; weight decay is the base optimizer's.

    Adam and AdamW take ``config.train.momentum`` as β₁ and keep the usual β₂ = 0.999,
    so a study has one "momentum" knob whatever the optimizer. Adam's weight decay
    is L2 added to the gradient; AdamW's is decoupled (Loshchilov & Hutter, 2019).
    Either way it acts once per step, at w, never on SAM's ascent.
    """
    params, name, lr = model.parameters(), config.base_optimizer, effective_lr(config)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown base_optimizer {name!r}; expected one of {OPTIMIZERS}")
    # On CUDA the fused kernels (one launch for every parameter); on the CPU the foreach
    # default, whose order of operations the CPU reference tests pin bit for bit.
    fused = True if torch.device(config.device).type == "cuda" else None
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=config.train.momentum,
            nesterov=config.train.nesterov,
            weight_decay=config.train.weight_decay,
            fused=fused,
        )
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(
        params,
        lr=lr,
        betas=(config.train.momentum, 0.999),
        weight_decay=config.train.weight_decay,
        fused=fused,
    )


def build_step(
    model: nn.Module,
    config: TrialConfig,
    *,
    total_steps: int = 0,
    position: Callable[[], int] | None = None,
) -> tuple[StepFn, torch.optim.Optimizer, StepOptions]:
    """The step function for ``config``, the base optimizer it drives, its options.

    ρ = 0 is the study's baseline: plain base-optimizer steps, one pass each,
    never a degenerate two-pass SAM step (docs/DESIGN.md §1). ``m`` is then moot.
    SAM late or every k (``config.sam_start`` > 0, ``config.sam_every`` > 1) mixes the
    two: it needs the run's ``total_steps`` and ``position``, the 0-based index of the
    step about to run (the loop's scheduler counts it, and a checkpoint restores it).
    """
    base = build_base_optimizer(model, config)
    options = StepOptions.for_model(model, config)
    # train.compile: the steps call the compiled module, which shares the model's
    # parameters and buffers; the model itself (its state_dict keys, evaluation, the
    # sharpness measurement's double backward) stays eager.
    net: Callable[[Tensor], Tensor] = torch.compile(model) if config.train.compile else model
    plain = partial(base_step, net, base, options)
    if config.rho == 0:
        return plain, base, options
    sam = build_sam(config.sam_variant or "sam", base, config.rho)
    sam_fn = partial(sam_step, net, sam, options)
    if config.sam_start == 0 and config.sam_every == 1:
        return sam_fn, base, options
    if position is None or total_steps < 1:
        raise ValueError("sam_start > 0 or sam_every > 1 needs total_steps and position")
    first = sam_start_step(config.sam_start, total_steps)
    every, where = config.sam_every, position

    def mixed(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return (sam_fn if is_sam_step(where(), first, every) else plain)(x, y)

    return mixed, base, options


def sam_start_step(sam_start: float, total_steps: int) -> int:
    """The index of the first step that may be a SAM step: ``sam_start`` of training
    (1.0: none is, the run is exactly the base optimizer's)."""
    return round(sam_start * total_steps)


def is_sam_step(index: int, first: int, every: int) -> bool:
    """Whether step ``index`` (0-based) is a SAM step: from ``first`` on, every ``every``-th."""
    return index >= first and (index - first) % every == 0


def sam_step_count(steps: int, first: int, every: int) -> int:
    """How many of steps 0..steps-1 are SAM steps (``is_sam_step``)."""
    return max(0, -(-(steps - first) // every))


def base_step(
    model: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    options: StepOptions,
    x: Tensor,
    y: Tensor,
) -> tuple[Tensor, Tensor]:
    """One forward/backward and one base-optimizer update."""
    optimizer.zero_grad(set_to_none=True)
    with options.autocast():
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=options.label_smoothing)
    loss.backward()
    if options.grad_clip is not None:
        clip_gradients(optimizer.param_groups, options.grad_clip)
    optimizer.step()
    return logged_loss(loss, logits, y, options), _correct(logits, y)


def sam_step(
    model: Callable[[Tensor], Tensor], sam: SAM, options: StepOptions, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """One SAM step (Foret et al., Algorithm 1) on the batch (x, y).

    With ``options.m`` (m-sharpness, Foret et al. §4.1), the batch
    is cut into micro-batches of m examples (the last one smaller if the batch is
    the epoch's partial remainder), each gets its own ε, and the second gradients
    are averaged, weighted by micro-batch size, into ``.grad`` for one base step.
    The unperturbed passes over all micro-batches are the logged pass over the
    whole batch. As on the paper's accelerators, each holding m examples,
    train-mode BatchNorm then normalizes each micro-batch with its own statistics,
    and its running statistics are updated once per micro-batch (by unperturbed
    passes only).
    """
    chunks = [(x, y)] if options.m is None or options.m >= len(x) else _split(x, y, options.m)
    sam.zero_grad(set_to_none=True)  # .grad will accumulate the second gradients
    losses, corrects = [], []  # per micro-batch, from the unperturbed passes
    for xc, yc in chunks:
        weight = len(xc) / len(x)  # exactly 1.0 for a single chunk
        # Saving/restoring the generator state costs about a microsecond, so it is
        # done whether or not the model has dropout (or any other random layer).
        rng = save_dropout_rng(options.device)
        # (1) g = ∇L(w) at the current weights; this pass is the one we log.
        with options.autocast():
            logits = model(xc)
            loss = F.cross_entropy(logits, yc, label_smoothing=options.label_smoothing)
        sam.first_step(torch.autograd.grad(loss, sam.params, allow_unused=True))
        # (2) g' = ∇L(w + ε) on the same examples, with the same dropout masks (a
        # different mask would be a different function, not w + ε on the same one).
        # BatchNorm normalizes with this batch's statistics but must not fold the
        # perturbed pass into its running ones.
        rewind_dropout_rng(rng, options.device)
        with frozen_batchnorm_stats(options.batchnorms), options.autocast():
            perturbed = F.cross_entropy(model(xc), yc, label_smoothing=options.label_smoothing)
        (perturbed if weight == 1.0 else perturbed * weight).backward()
        sam.restore()  # w ← w − ε exactly (bitwise)
        logged = logged_loss(loss, logits, yc, options)
        losses.append(logged if weight == 1.0 else logged * weight)
        corrects.append(_correct(logits, yc))
    if options.grad_clip is not None:
        clip_gradients(sam.param_groups, options.grad_clip)
    sam.base_step()  # the base optimizer steps at w with (the average of) g'
    return sum(losses[1:], losses[0]), sum(corrects[1:], corrects[0])


def _split(x: Tensor, y: Tensor, m: int) -> list[tuple[Tensor, Tensor]]:
    return list(zip(x.split(m), y.split(m), strict=True))


def logged_loss(loss: Tensor, logits: Tensor, y: Tensor, options: StepOptions) -> Tensor:
    """Plain cross-entropy of the unperturbed pass (recomputed only if smoothed)."""
    if options.label_smoothing == 0:
        return loss.detach()
    logits = logits.detach()
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y)


def _correct(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.detach().argmax(dim=1) == y).sum()


def clip_gradients(param_groups: Sequence[dict], max_norm: float) -> None:
    """Scale ``.grad`` so that its global L2 norm is at most ``max_norm``.

    No host sync: clip_grad_norm_ multiplies by min(1, max_norm / norm) on device.
    """
    params = [p for group in param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def batchnorm_modules(model: nn.Module) -> tuple[_BatchNorm, ...]:
    return tuple(m for m in model.modules() if isinstance(m, _BatchNorm))


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module | Sequence[_BatchNorm]) -> Iterator[None]:
    """Train-mode BatchNorm that leaves running_mean/var/num_batches_tracked alone.

    With ``track_running_stats = False`` a BatchNorm in train mode passes no
    running buffers to the kernel, so nothing is computed or written: cheaper
    than momentum = 0 (which still does the blend arithmetic and still bumps
    num_batches_tracked) and than saving/restoring every buffer (two copies).
    The normalization itself is unchanged (batch statistics in train mode).
    Takes a model, or its BN modules listed once (the hot path does that).
    """
    modules = batchnorm_modules(model) if isinstance(model, nn.Module) else model
    flags = [m.track_running_stats for m in modules]
    for m in modules:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.track_running_stats = flag


def save_dropout_rng(device: str | torch.device) -> tuple[Tensor, Tensor | None]:
    """The global generator states a dropout layer draws from on ``device``."""
    device = torch.device(device)
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def rewind_dropout_rng(state: tuple[Tensor, Tensor | None], device: str | torch.device) -> None:
    """Rewind to ``state`` so the next forward draws the same dropout masks.

    Not torch.random.fork_rng: after pass 2 the generator must stand where pass 1
    left it (so the next step draws new masks), which rewinding gives for free.
    """
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], torch.device(device))
