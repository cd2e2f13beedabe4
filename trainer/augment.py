"""Training-set augmentation as batched tensor ops on the training device.

The standard CIFAR recipe that SAM's results use (Foret et al. 2021, §3.1):
random crop with 4-pixel padding, horizontal flip, optionally cutout (DeVries &
Taylor 2017: one 16×16 square for 32×32 images). Every op handles the whole batch
at once (gather / where / a broadcast mask): no Python loop over images, no
DataLoader workers, the data never leaves the device (cf. airbench).

- Sizes scale with the image: padding = size/8 (4 px at 32, 1 px at 8), cutout
  side = size/2 (16 at 32).
- Images are already normalized, so "zero" padding and the cutout fill are 0 in
  normalized space, i.e. the training-set mean colour (cutout's own choice, as it
  is applied after normalization; for the crop it differs from black padding by
  a constant shift in a 4-pixel border, which does not matter for the recipe).
- Flipping changes the identity of a digit (and of a synthetic random template),
  so flip-based augmentation is refused on those datasets rather than silently
  reduced to crops: ``build_augment`` raises ValueError.
- Randomness comes from the augmentation's own generator on the device, seeded
  from the trial seed, so it neither shifts nor is shifted by dropout or shuffling,
  and its state goes into checkpoints.
- Only training batches are augmented; evaluation and the final train accuracy
  see the original images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTS = ("none", "crop_flip", "crop_flip_cutout")
FLIP_SAFE_DATASETS = ("cifar10", "cifar100")  # natural images: mirror images keep the class
AUGMENT_STREAM = 0xA9  # tells this generator's seed apart from the shuffle generator's


class Augment:
    """Random crop + horizontal flip (+ cutout) of an N×C×H×W batch."""

    def __init__(self, image_size: int, cutout: bool, generator: torch.Generator) -> None:
        self.pad = max(1, image_size // 8)
        self.cutout = image_size // 2 if cutout else 0
        self.generator = generator

    def __call__(self, x: Tensor) -> Tensor:
        x = random_crop(x, self.pad, self.generator)
        x = random_flip(x, self.generator)
        if self.cutout:
            x = cutout(x, self.cutout, self.generator)
        return x


def build_augment(
    kind: str, dataset: str, image_size: int, seed: int, device: str | torch.device
) -> Augment | None:
    """The augmentation ``kind`` for ``dataset``, or None for "none"."""
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augment {kind!r}; expected one of {AUGMENTS}")
    if kind == "none":
        return None
    if dataset not in FLIP_SAFE_DATASETS:
        raise ValueError(
            f"augment {kind!r} flips images, which changes the class on {dataset!r} "
            f"(a mirrored digit is another digit); allowed on {FLIP_SAFE_DATASETS} only"
        )
    return Augment(image_size, kind == "crop_flip_cutout", augment_generator(seed, device))


def augment_generator(seed: int, device: str | torch.device) -> torch.Generator:
    """A generator on ``device`` whose seed is derived from (seed, AUGMENT_STREAM).

    SeedSequence mixes the two, so trial seed s never shares a stream with the
    shuffle generator of any trial (which is seeded with s itself).
    """
    mixed = np.random.SeedSequence([seed, AUGMENT_STREAM]).generate_state(1, dtype=np.uint64)
    return torch.Generator(device=device).manual_seed(int(mixed[0]) >> 1)


def random_crop(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """An H×W window of each zero-padded image at an independent random offset."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).flatten(2)  # N×C×(H+2p)(W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=x.device, generator=generator)
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
    index = (rows * (w + 2 * pad) + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.gather(2, index).view(n, c, h, w)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Each image mirrored left-right with probability ½."""
    flip = torch.rand(len(x), device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Zero a size×size square per image, centred anywhere in the image.

    As in DeVries & Taylor 2017, the centre is uniform over the whole image and
    the square is clipped at the border, so it is sometimes partly outside.
    """
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - (cy - size // 2)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - (cx - size // 2)
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)  # N×H×W
    return x.masked_fill(inside.unsqueeze(1), 0.0)
