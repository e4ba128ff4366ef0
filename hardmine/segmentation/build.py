"""Build a segmentation model from a `Config` (model.arch=fcn or deeplabv3): the backbone of
`model.*`, torchvision's head on its FPN level `seg_head.feature_level`, and copies of the
configured pixel loss and sampler. The only reader of the config for segmentation models."""

from __future__ import annotations

import dataclasses

from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from hardmine.config import Config
from hardmine.errors import ConfigError
from hardmine.models.backbones import build_backbone
from hardmine.models.transform import DetectionTransform
from hardmine.segmentation.model import SegmentationModel


def build_segmentation_model(cfg: Config, num_classes: int) -> SegmentationModel:
    """A segmentation model for `num_classes` classes (labels 1..C, background 0) as the config says."""
    m, s = cfg.model, cfg.seg_head
    backbone = build_backbone(
        m.backbone,
        pretrained=m.pretrained,
        trainable_layers=m.trainable_layers,
        fpn_channels=m.fpn_channels or None,
    )
    levels = list(backbone.feature_names)
    if not 0 <= s.feature_level < len(levels):
        raise ConfigError(
            f"seg_head.feature_level={s.feature_level}: backbone {m.backbone!r} has FPN levels "
            f"0..{len(levels) - 1}"
        )
    channels = backbone.out_channels
    if m.arch == "fcn":
        head = FCNHead(channels, num_classes + 1)
    elif m.arch == "deeplabv3":
        head = DeepLabHead(channels, num_classes + 1, atrous_rates=tuple(s.atrous_rates))
    else:
        raise ConfigError(f"model.arch={m.arch!r} is not a segmentation model (fcn, deeplabv3)")
    return SegmentationModel(
        backbone,
        head,
        DetectionTransform(tuple(m.min_size), m.max_size),
        loss=dataclasses.replace(s.loss),
        sampler=dataclasses.replace(s.sampler),
        num_classes=num_classes,
        feature=levels[s.feature_level],
        normalizer=s.normalizer,
    )
