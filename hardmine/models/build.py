"""Build detectors from a `Config`: the one place where config names become typed objects."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from hardmine.config import Config, DenseHeadConfig, RoIHeadConfig, RPNConfig
from hardmine.models.backbones import build_backbone
from hardmine.models.dense_head import DenseHead
from hardmine.models.hard_negatives import HardNegativeUpweight
from hardmine.models.iterative import IterativeRegression
from hardmine.models.retinanet import RetinaNet
from hardmine.models.roi_head import RoIHead
from hardmine.models.rpn import RPN
from hardmine.models.transform import DetectionTransform
from hardmine.models.two_stage import TwoStageDetector
from hardmine.sampling import SAMPLERS, IoUThresholds, Sampler


def build_sampler(section: RPNConfig | RoIHeadConfig | DenseHeadConfig) -> Sampler:
    """The sampler named by `section.sampler`, with that section's thresholds and budget."""
    # OHEM and SSD's hard negatives have their own lower background bound (their papers': 0).
    bg_lo = {"ohem": section.ohem.bg_iou_lo, "hard_negative": section.hard_negative.bg_iou_lo}.get(
        section.sampler, section.bg_iou_lo
    )
    thresholds = IoUThresholds(fg=section.fg_iou, bg_lo=bg_lo, bg_hi=section.bg_iou_hi)
    cls = SAMPLERS[section.sampler]
    kwargs: dict[str, Any] = {"thresholds": thresholds}
    if section.sampler in ("random", "iou_balanced"):
        kwargs.update(batch_size_per_image=section.batch_size_per_image, fg_fraction=section.fg_fraction)
    if section.sampler == "iou_balanced":
        b = section.iou_balanced
        kwargs.update(num_bins=b.num_bins, floor_iou=b.floor_iou, floor_fraction=b.floor_fraction)
    elif section.sampler == "hard_negative":
        h = section.hard_negative
        kwargs.update(neg_pos_ratio=h.neg_pos_ratio, min_negatives_per_image=h.min_negatives_per_image)
    elif section.sampler == "ohem":
        o = section.ohem
        kwargs.update(
            batch_size_per_image=o.batch_size_per_image,
            per_image=o.per_image,
            nms_thresh=o.nms_thresh,
            rank_by=o.rank_by,
            fg_fraction=o.fg_fraction,
            mode=o.mode,
        )
    return cls(**kwargs)


def _anchor_generator(cfg: Config, backbone: nn.Module) -> AnchorGenerator:
    sizes = tuple(tuple(level) for level in cfg.model.anchor_sizes) or tuple(backbone.anchor_sizes)
    if len(sizes) != len(backbone.anchor_sizes):
        raise ValueError(
            f"model.anchor_sizes has {len(sizes)} levels but backbone {cfg.model.backbone!r} "
            f"returns {len(backbone.anchor_sizes)} feature levels"
        )
    ratios = (tuple(cfg.model.aspect_ratios),) * len(sizes)
    return AnchorGenerator(sizes, ratios)


def _iterative_regression(cfg: Config) -> IterativeRegression | None:
    """The RoI head's test-time iterative box regression; None when `roi_head.iterative.rounds` is 0."""
    it = cfg.roi_head.iterative
    if it.rounds == 0:
        return None
    return IterativeRegression(
        rounds=it.rounds, nms_thresh=it.nms_thresh, box_voting=it.box_voting, voting_iou=it.voting_iou
    )


def _hard_negative_upweight(cfg: Config) -> HardNegativeUpweight:
    """How the dense head weights background anchors on mined regions (inactive without a mined file:
    the targets then carry no regions)."""
    return HardNegativeUpweight(iou=cfg.mining.anchor_iou, weight=cfg.mining.weight)


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
        head = DenseHead(
            in_channels=backbone.out_channels,
            num_anchors=anchors.num_anchors_per_location()[0],
            num_classes=num_classes,
            sampler=build_sampler(d),
            cls_loss=d.cls_loss,
            reg_loss=d.reg_loss,
            focal_alpha=d.focal_alpha,
            focal_gamma=d.focal_gamma,
            label_smoothing=d.label_smoothing,
            smooth_l1_beta=d.smooth_l1_beta,
            balanced_l1_alpha=d.balanced_l1_alpha,
            balanced_l1_gamma=d.balanced_l1_gamma,
            balanced_l1_beta=d.balanced_l1_beta,
            ghmc_bins=d.ghmc_bins,
            ghmc_momentum=d.ghmc_momentum,
            ghmr_mu=d.ghmr_mu,
            ghmr_bins=d.ghmr_bins,
            ghmr_momentum=d.ghmr_momentum,
            ghmr_loss_weight=d.ghmr_loss_weight,
            normalizer_momentum=d.normalizer_momentum,
            normalizer_init=d.normalizer_init,
            prior_prob=d.prior_prob,
            guided_loss=d.guided_loss,
            class_adaptive_thresh=d.class_adaptive_thresh,
            num_convs=d.num_convs,
            head_norm=d.head_norm,
            hard_negatives=_hard_negative_upweight(cfg),
        )
        return RetinaNet(
            backbone,
            head,
            anchors,
            transform,
            score_thresh=d.score_thresh,
            nms_thresh=d.nms_thresh,
            detections_per_img=d.detections_per_img,
            topk_candidates=d.topk_candidates,
        )
    r = cfg.roi_head
    roi_pool = MultiScaleRoIAlign(backbone.feature_names, r.roi_output_size, r.sampling_ratio)
    box_head = TwoMLPHead(backbone.out_channels * r.roi_output_size**2, r.representation_size)
    roi_head = RoIHead(
        roi_pool,
        box_head,
        FastRCNNPredictor(r.representation_size, num_classes + 1),
        sampler=build_sampler(r),
        cls_loss=r.cls_loss,
        reg_loss=r.reg_loss,
        smooth_l1_beta=r.smooth_l1_beta,
        focal_gamma=r.focal_gamma,
        label_smoothing=r.label_smoothing,
        balanced_l1_alpha=r.balanced_l1_alpha,
        balanced_l1_gamma=r.balanced_l1_gamma,
        balanced_l1_beta=r.balanced_l1_beta,
        add_gt_as_proposals=r.add_gt_as_proposals,
        score_chunk_size=r.score_chunk_size,
        score_thresh=r.score_thresh,
        nms_thresh=r.nms_thresh,
        detections_per_img=r.detections_per_img,
        guided_loss=r.guided_loss,
        class_adaptive_thresh=r.class_adaptive_thresh,
        iterative=_iterative_regression(cfg),
    )
    rpn = None
    if cfg.model.arch == "faster_rcnn":
        p = cfg.rpn
        rpn = RPN(
            anchors,
            RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
            sampler=build_sampler(p),
            pre_nms_top_n={"training": p.pre_nms_top_n_train, "testing": p.pre_nms_top_n_test},
            post_nms_top_n={"training": p.post_nms_top_n_train, "testing": p.post_nms_top_n_test},
            nms_thresh=p.nms_thresh,
            smooth_l1_beta=p.smooth_l1_beta,
            guided_loss=p.guided_loss,
        )
    return TwoStageDetector(transform, backbone, rpn, roi_head)
