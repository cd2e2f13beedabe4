from __future__ import annotations

import pytest
import torch

from trainer.models import build_model


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32), (1, 28)])
def test_cnn_adapts_to_input_shape(channels: int, size: int) -> None:
    model = build_model("cnn", channels, 7, size)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_resnet18_cifar_variant() -> None:
    model = build_model("resnet18", 3, 10, 32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    first_conv = model.stem[0]
    assert first_conv.kernel_size == (3, 3) and first_conv.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000


def test_unknown_model_is_named() -> None:
    with pytest.raises(ValueError, match="vgg"):
        build_model("vgg", 3, 10, 32)
