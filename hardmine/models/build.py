"""Build detectors from a `Config`: the only reader of the config among the models.

Each builder takes its config section and returns typed objects: the section's sampler (a copy of
the configured one, labelling with the head's IoU thresholds), its losses (the configured loss
table entries, as they are), then the head and the detector. Heads never see the config.
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from hardmine.config import Config, DenseHeadConfig, HeadConfig, RoIHeadConfig, RPNConfig
from hardmine.models.backbones import build_backbone
from hardmine.models.dense_head import DenseHead
from hardmine.models.hard_negatives import HardNegativeUpweight
from hardmine.models.retinanet import RetinaNet
from hardmine.models.roi_head import RoIHead
from hardmine.models.rpn import RPN
from hardmine.models.transform import DetectionTransform
from hardmine.models.two_stage import TwoStageDetector
from hardmine.sampling import Sampler


def build_sampler(section: HeadConfig, sampler: Sampler | None = None) -> Sampler:
    """A fresh copy of `sampler` (default: the section's) labelling with the section's IoU
    thresholds (`HeadConfig.thresholds`: a null `bg_iou_lo` is the sampler's paper value)."""
    sampler = section.sampler if sampler is None else sampler
    return dataclasses.replace(sampler, thresholds=section.thresholds(sampler))


def _anchor_generator(cfg: Config, backbone: nn.Module) -> AnchorGenerator:
    sizes = tuple(tuple(level) for level in cfg.model.anchor_sizes) or tuple(backbone.anchor_sizes)
    if len(sizes) != len(backbone.anchor_sizes):
        raise ValueError(
            f"model.anchor_sizes has {len(sizes)} levels but backbone {cfg.model.backbone!r} "
            f"returns {len(backbone.anchor_sizes)} feature levels"
        )
    ratios = (tuple(cfg.model.aspect_ratios),) * len(sizes)
    return AnchorGenerator(sizes, ratios)


def build_rpn(p: RPNConfig, backbone: nn.Module, anchors: AnchorGenerator) -> RPN:
    """The RPN of `rpn.*` over `backbone`'s features."""
    return RPN(
        anchors,
        RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
        sampler=build_sampler(p),
        pre_nms_top_n={"training": p.pre_nms_top_n_train, "testing": p.pre_nms_top_n_test},
        post_nms_top_n={"training": p.post_nms_top_n_train, "testing": p.post_nms_top_n_test},
        nms_thresh=p.nms_thresh,
        cls_loss=p.cls_loss,
        reg_loss=p.reg_loss,
        guided_loss=p.guided_loss,
    )


def build_roi_head(r: RoIHeadConfig, backbone: nn.Module, num_classes: int) -> RoIHead:
    """The RoI head of `roi_head.*` over `backbone`'s features, for C = `num_classes`."""
    roi_pool = MultiScaleRoIAlign(backbone.feature_names, r.roi_output_size, r.sampling_ratio)
    box_head = TwoMLPHead(backbone.out_channels * r.roi_output_size**2, r.representation_size)
    return RoIHead(
        roi_pool,
        box_head,
        FastRCNNPredictor(r.representation_size, num_classes + 1),
        sampler=build_sampler(r),
        cls_loss=r.cls_loss,
        reg_loss=r.reg_loss,
        add_gt_as_proposals=r.add_gt_as_proposals,
        score_chunk_size=r.score_chunk_size,
        score_thresh=r.score_thresh,
        nms_thresh=r.nms_thresh,
        detections_per_img=r.detections_per_img,
        guided_loss=r.guided_loss,
        class_adaptive_thresh=r.class_adaptive_thresh,
        iterative=r.iterative if r.iterative.rounds > 0 else None,
    )


def build_dense_head(
    d: DenseHeadConfig,
    backbone: nn.Module,
    anchors: AnchorGenerator,
    num_classes: int,
    mined: HardNegativeUpweight,
) -> DenseHead:
    """The dense head of `dense_head.*`; `mined` weights background anchors on mined regions (no
    effect without a mined file: the targets then carry no regions)."""
    return DenseHead(
        in_channels=backbone.out_channels,
        num_anchors=anchors.num_anchors_per_location()[0],
        num_classes=num_classes,
        sampler=build_sampler(d),
        cls_loss=d.cls_loss,
        reg_loss=d.reg_loss,
        normalizer_momentum=d.normalizer_momentum,
        prior_prob=d.prior_prob,
        guided_loss=d.guided_loss,
        class_adaptive_thresh=d.class_adaptive_thresh,
        num_convs=d.num_convs,
        head_norm=d.head_norm,
        hard_negatives=mined,
    )


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """A detector for `num_classes` object classes (labels 1..C) as the config describes."""
    backbone = build_backbone(
        cfg.model.backbone,
        pretrained=cfg.model.pretrained,
        trainable_layers=cfg.model.trainable_layers,
        fpn_channels=cfg.model.fpn_channels or None,
    )
    transform = DetectionTransform(tuple(cfg.model.min_size), cfg.model.max_size)
    anchors = _anchor_generator(cfg, backbone)
    if cfg.model.arch == "retinanet":
        d = cfg.dense_head
        mined = HardNegativeUpweight(iou=cfg.mining.anchor_iou, weight=cfg.mining.weight)
        return RetinaNet(
            backbone,
            build_dense_head(d, backbone, anchors, num_classes, mined),
            anchors,
            transform,
            score_thresh=d.score_thresh,
            nms_thresh=d.nms_thresh,
            detections_per_img=d.detections_per_img,
            topk_candidates=d.topk_candidates,
        )
    roi_head = build_roi_head(
        cfg.roi_head, backbone, num_classes
    )  # before the RPN: the order of the RNG draws
    rpn = build_rpn(cfg.rpn, backbone, anchors) if cfg.model.arch == "faster_rcnn" else None
    return TwoStageDetector(transform, backbone, rpn, roi_head)
