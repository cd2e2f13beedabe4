"""Models: a small BatchNorm CNN for any image size, the CIFAR ResNet-18, and the
WideResNet that SAM's CIFAR results use (Foret et al. 2021, Tables 1 and 4: WRN-28-10).

All contain BatchNorm on purpose: SAM's perturbed pass must not update its running
statistics (steps.sam_step), and a model without BN would not exercise that.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

MODELS = ("cnn", "resnet18", "wrn")
WRN_DEFAULT_DEPTH, WRN_DEFAULT_WIDTH = 16, 8  # WRN-16-8: ~11 M params, like ResNet-18


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    *,
    depth: int | None = None,
    width: int | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """The model called ``name`` for C×image_size×image_size inputs and num_classes.

    ``depth``, ``width`` and ``dropout`` configure ``wrn`` only (WRN-16-8, no
    dropout, if not given); the fixed architectures ignore them.
    """
    if name == "cnn":
        return SmallCNN(in_channels, num_classes, image_size)
    if name == "resnet18":
        return ResNet18(in_channels, num_classes)
    if name == "wrn":
        return WideResNet(
            in_channels,
            num_classes,
            depth=WRN_DEFAULT_DEPTH if depth is None else depth,
            width=WRN_DEFAULT_WIDTH if width is None else width,
            dropout=dropout,
        )
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    # No conv bias: the BatchNorm right after it has its own shift.
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (32, 64, 128 channels), global pool, linear head.

    A stage halves the spatial size only while the map is at least 8 pixels wide,
    so 8×8 digits get one pooling (8→4) and 32×32 CIFAR gets three (32→4): the
    same network fits both, and CIFAR costs about 10 M multiply-adds per image.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, channels = image_size, in_channels
        for width in (32, 64, 128):
            layers += [*conv_bn(channels, width), nn.ReLU(inplace=True)]
            if size >= 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1 projection) shortcut, He et al. 2016."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(in_channels, out_channels, stride),
            nn.ReLU(inplace=True),
            *conv_bn(out_channels, out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 in its CIFAR form: a 3×3 stride-1 stem and no max-pool, because a
    7×7/2 stem plus pooling would shrink a 32×32 image to 8×8 before the first block.
    Four stages of two BasicBlocks (64, 128, 256, 512 channels), about 11 M params.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 64), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        channels = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


class PreActBlock(nn.Module):
    """WRN's block: BN-ReLU-conv3×3-BN-ReLU-dropout-conv3×3 plus a shortcut.

    Pre-activation (He et al., "Identity Mappings", 2016) as in Zagoruyko &
    Komodakis 2016, with dropout between the convolutions (their §2.4), placed
    after the second ReLU as in the authors' code (models/wide-resnet.lua). When
    the shape changes, the 1×1 projection shortcut takes the pre-activated input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-width (Zagoruyko & Komodakis, BMVC 2016) for CIFAR-sized inputs.

    depth = 6n + 4: a 3×3 stem to 16 channels, three stages of n blocks at 16k,
    32k, 64k channels (strides 1, 2, 2), then BN-ReLU, global pool, linear head.
    WRN-28-10 has 36.5 M parameters, WRN-16-8 11.0 M.
    """

    def __init__(
        self, in_channels: int, num_classes: int, depth: int, width: int, dropout: float
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(
                f"wrn depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}"
            )
        if width < 1:
            raise ValueError(f"wrn width (widen factor) must be >= 1, got {width}")
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        channels = 16
        for stage_width, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            for i in range(n):
                blocks.append(PreActBlock(channels, stage_width, stride if i == 0 else 1, dropout))
                channels = stage_width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 init, as the WRN authors' code (MSRinit): N(0, 2/(k²·out)).
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))
