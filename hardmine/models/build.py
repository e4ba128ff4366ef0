"""Build detectors from a `Config`: the only reader of the config among the models.

Each builder takes its config section and returns typed objects: the section's sampler (a copy of
the configured one, labelling with the head's IoU thresholds), its losses (copies of the
configured loss table entries), then the head and the detector. Heads never see the config. With
`model.torchvision_detector` the architecture's modules and their COCO weights come from
torchvision's detector (`hardmine.models.torchvision_detectors`); samplers and losses still come
from the config.
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead

from hardmine.config import SEGMENTATION_ARCHS, Config, DenseHeadConfig, HeadConfig, RoIHeadConfig, RPNConfig
from hardmine.models.backbones import build_backbone
from hardmine.models.dense_head import DenseHead
from hardmine.models.hard_negatives import HardNegativeUpweight
from hardmine.models.retinanet import RetinaNet
from hardmine.models.roi_head import RoIHead
from hardmine.models.rpn import RPN
from hardmine.models.torchvision_detectors import PretrainedModules, load_torchvision_detector
from hardmine.models.transform import DetectionTransform
from hardmine.models.two_stage import TwoStageDetector
from hardmine.ops import MultiScaleRoIAlign
from hardmine.sampling import Sampler
from hardmine.segmentation.build import build_segmentation_model


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


def build_rpn(
    p: RPNConfig, backbone: nn.Module, anchors: AnchorGenerator, pretrained: PretrainedModules | None = None
) -> RPN:
    """The RPN of `rpn.*` over `backbone`'s features (its head the pretrained one, if any)."""
    if pretrained is None or pretrained.rpn_head is None:
        head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0])
    else:
        head = pretrained.rpn_head
    return RPN(
        anchors,
        head,
        sampler=build_sampler(p),
        pre_nms_top_n={"training": p.pre_nms_top_n_train, "testing": p.pre_nms_top_n_test},
        post_nms_top_n={"training": p.post_nms_top_n_train, "testing": p.post_nms_top_n_test},
        nms_thresh=p.nms_thresh,
        cls_loss=dataclasses.replace(p.cls_loss),
        reg_loss=dataclasses.replace(p.reg_loss),
        guided_loss=p.guided_loss,
    )


def build_roi_head(
    r: RoIHeadConfig, backbone: nn.Module, num_classes: int, pretrained: PretrainedModules | None = None
) -> RoIHead:
    """The RoI head of `roi_head.*` over `backbone`'s features, for C = `num_classes` (its RoI
    pooling and box head the pretrained ones, if any; the class-specific predictor is always new).
    RoI pooling is hardmine's `MultiScaleRoIAlign`: torchvision's values, faster on the CPU
    (docs/BENCHMARKS.md, "RoIAlign on the CPU"); torchvision's op on CUDA."""
    if pretrained is None or pretrained.box_head is None:
        roi_pool = MultiScaleRoIAlign(backbone.feature_names, r.roi_output_size, r.sampling_ratio)
        box_head = TwoMLPHead(backbone.out_channels * r.roi_output_size**2, r.representation_size)
        box_features = r.representation_size
    else:
        roi_pool, box_head = MultiScaleRoIAlign.like(pretrained.box_roi_pool), pretrained.box_head
        box_features = pretrained.box_head_features
    return RoIHead(
        roi_pool,
        box_head,
        FastRCNNPredictor(box_features, num_classes + 1),
        sampler=build_sampler(r),
        cls_loss=dataclasses.replace(r.cls_loss),
        reg_loss=dataclasses.replace(r.reg_loss),
        add_gt_as_proposals=r.add_gt_as_proposals,
        score_chunk_size=r.score_chunk_size,
        score_thresh=r.score_thresh,
        nms_thresh=r.nms_thresh,
        detections_per_img=r.detections_per_img,
        guided_loss=r.guided_loss,
        class_adaptive_thresh=r.class_adaptive_thresh,
        iterative=dataclasses.replace(r.iterative) if r.iterative.rounds > 0 else None,
    )


def build_dense_head(
    d: DenseHeadConfig,
    backbone: nn.Module,
    anchors: AnchorGenerator,
    num_classes: int,
    mined: HardNegativeUpweight,
    pretrained: PretrainedModules | None = None,
) -> DenseHead:
    """The dense head of `dense_head.*` (its towers and box regression the pretrained ones, if any);
    `mined` weights background anchors on mined regions (no effect without a mined file: the
    targets then carry no regions)."""
    head = DenseHead(
        in_channels=backbone.out_channels,
        num_anchors=anchors.num_anchors_per_location()[0],
        num_classes=num_classes,
        sampler=build_sampler(d),
        cls_loss=dataclasses.replace(d.cls_loss),
        reg_loss=dataclasses.replace(d.reg_loss),
        normalizer_momentum=d.normalizer_momentum,
        normalizer_init=d.normalizer_init,
        prior_prob=d.prior_prob,
        guided_loss=d.guided_loss,
        class_adaptive_thresh=d.class_adaptive_thresh,
        num_convs=d.num_convs,
        head_norm=d.head_norm,
        hard_negatives=mined,
    )
    if pretrained is not None:
        pretrained.init_dense_head(head)
    return head


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """A detector for `num_classes` object classes (labels 1..C) as the config describes, or a
    segmentation model for model.arch=fcn / deeplabv3 (`hardmine.segmentation.build`)."""
    if cfg.model.arch in SEGMENTATION_ARCHS:
        return build_segmentation_model(cfg, num_classes)
    # A torchvision COCO detector provides the architecture's modules, with its weights.
    coco = cfg.model.torchvision_detector
    pretrained = load_torchvision_detector(coco, cfg.model.trainable_layers) if coco else None
    if pretrained is None:
        backbone = build_backbone(
            cfg.model.backbone,
            pretrained=cfg.model.pretrained,
            trainable_layers=cfg.model.trainable_layers,
            fpn_channels=cfg.model.fpn_channels or None,
        )
        anchors = _anchor_generator(cfg, backbone)
    else:
        backbone, anchors = pretrained.backbone, pretrained.anchor_generator
    transform = DetectionTransform(tuple(cfg.model.min_size), cfg.model.max_size)
    if cfg.model.arch == "retinanet":
        d = cfg.dense_head
        mined = HardNegativeUpweight(iou=cfg.mining.anchor_iou, weight=cfg.mining.weight)
        return RetinaNet(
            backbone,
            build_dense_head(d, backbone, anchors, num_classes, mined, pretrained),
            anchors,
            transform,
            score_thresh=d.score_thresh,
            nms_thresh=d.nms_thresh,
            detections_per_img=d.detections_per_img,
            topk_candidates=d.topk_candidates,
        )
    # the RoI head before the RPN: the order of the parameters' random initialisation
    roi_head = build_roi_head(cfg.roi_head, backbone, num_classes, pretrained)
    rpn = build_rpn(cfg.rpn, backbone, anchors, pretrained) if cfg.model.arch == "faster_rcnn" else None
    return TwoStageDetector(transform, backbone, rpn, roi_head)
