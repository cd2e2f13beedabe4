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


# docs/spec.md "The study spec": model wrn with depth and width
@pytest.mark.parametrize(
    "depth,width,params", [(None, None, 10_961_370), (28, 10, 36_479_194), (10, 1, 77_850)]
)
def test_wrn_sizes_match_the_paper(depth: int | None, width: int | None, params: int) -> None:
    """WRN-16-8 is the default; WRN-28-10 has the paper's 36.5 M parameters."""
    model = build_model("wrn", 3, 10, 32, depth=depth, width=width)
    assert sum(p.numel() for p in model.parameters()) == params


def test_wrn_forward_shapes_and_preactivation_layout() -> None:
    model = build_model("wrn", 3, 100, 32, depth=10, width=2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert build_model("wrn", 1, 10, 8, depth=10, width=1)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    first = model.blocks[0]
    assert isinstance(first.bn1, torch.nn.BatchNorm2d) and first.bn1.num_features == 16
    assert isinstance(first.shortcut, torch.nn.Conv2d)  # 16 -> 32 channels: projection
    assert [b.conv1.stride for b in model.blocks] == [(1, 1), (2, 2), (2, 2)]


def test_wrn_dropout_sits_between_the_convolutions_and_only_in_training() -> None:
    torch.manual_seed(0)
    model = build_model("wrn", 3, 10, 32, depth=10, width=1, dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 3 and all(d.p == 0.3 for d in drops)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    plain = build_model("wrn", 3, 10, 32, depth=10, width=1)
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())


@pytest.mark.parametrize("depth", [15, 4, 27])
def test_wrn_bad_depth_is_named(depth: int) -> None:
    with pytest.raises(ValueError, match=f"depth.*{depth}"):
        build_model("wrn", 3, 10, 32, depth=depth, width=1)


def test_depth_width_dropout_are_ignored_by_fixed_models() -> None:
    model = build_model("cnn", 1, 10, 8, depth=3, width=99, dropout=0.5)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
