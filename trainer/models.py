"""Models: a small BatchNorm CNN for any image size, and the CIFAR ResNet-18.

Both contain BatchNorm on purpose: SAM's perturbed pass must not update its running
statistics (loop.sam_step), and a model without BN would not exercise that.
"""

from __future__ import annotations

from torch import Tensor, nn


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The model called ``name`` for C×image_size×image_size inputs and num_classes."""
    if name == "cnn":
        return SmallCNN(in_channels, num_classes, image_size)
    if name == "resnet18":
        return ResNet18(in_channels, num_classes)
    raise ValueError(f"unknown model {name!r}; expected 'cnn' or 'resnet18'")


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
