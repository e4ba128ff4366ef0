"""Backbones: level names, strides, channels, attributes, freezing and the no-download rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hardmine import weights
from hardmine.errors import ConfigError
from hardmine.models.backbones import BACKBONES, build_backbone, default_anchor_sizes


def _shapes(backbone: nn.Module, height: int, width: int) -> dict[str, tuple[int, ...]]:
    with torch.no_grad():
        return {k: tuple(v.shape) for k, v in backbone(torch.rand(1, 3, height, width)).items()}


def test_tiny_levels_strides_and_channels():
    backbone = build_backbone("tiny")
    shapes = _shapes(backbone, 320, 256)
    assert list(shapes) == ["0", "1", "2", "pool"]
    assert [s[2:] for s in shapes.values()] == [(40, 32), (20, 16), (10, 8), (5, 4)]  # strides 8..64
    assert {s[1] for s in shapes.values()} == {64} and backbone.out_channels == 64
    assert backbone.feature_names == ["0", "1", "2"]
    assert backbone.anchor_sizes == default_anchor_sizes(4)
    assert len(backbone.anchor_sizes) == len(shapes)


def test_tiny_fpn_channels_and_all_layers_trainable():
    backbone = build_backbone("tiny", fpn_channels=32, trainable_layers=0)
    assert backbone.out_channels == 32
    assert {s[1] for s in _shapes(backbone, 64, 64).values()} == {32}
    # Without pretrained weights everything trains, whatever trainable_layers says.
    assert all(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize(
    ("name", "strides"),
    [("mobilenet_v3_fpn", (8, 16, 32, 64)), ("resnet18_fpn", (4, 8, 16, 32, 64))],
)
def test_torchvision_backbones_from_scratch(name, strides):
    backbone = build_backbone(name, fpn_channels=32)
    shapes = _shapes(backbone, 128, 128)
    assert list(shapes)[-1] == "pool"
    assert backbone.feature_names == list(shapes)[:-1]
    assert [128 // s[2] for s in shapes.values()] == list(strides)
    assert {s[1] for s in shapes.values()} == {32} == {backbone.out_channels}
    assert len(backbone.anchor_sizes) == len(shapes)
    assert all(p.requires_grad for p in backbone.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_default_fpn_width_of_torchvision_backbones():
    assert build_backbone("mobilenet_v2_fpn").out_channels == 256


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ConfigError, match="resnet50_fpn"):
        build_backbone("vgg16")


def test_tiny_has_no_pretrained_weights():
    with pytest.raises(ConfigError, match="pretrained=false"):
        build_backbone("tiny", pretrained=True)


@pytest.mark.parametrize(
    ("name", "file_name"),
    [("resnet18_fpn", "resnet18-f37072fd.pth"), ("mobilenet_v2_fpn", "mobilenet_v2-b0353104.pth")],
)
def test_pretrained_without_cache_raises_instead_of_downloading(name, file_name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "_offline_files", dict)  # no offline package to seed the cache from
    with pytest.raises(ConfigError, match=file_name) as info:
        build_backbone(name, pretrained=True)
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)
    assert "pretrained=false" in str(info.value)
    assert not (tmp_path / "hub" / "checkpoints" / file_name).exists()


def test_registry_names():
    assert set(BACKBONES) == {"tiny", "mobilenet_v2_fpn", "mobilenet_v3_fpn", "resnet18_fpn", "resnet50_fpn"}
