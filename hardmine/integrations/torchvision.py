"""OHEM, or any hardmine sampler, in torchvision's own, unmodified `FasterRCNN`.

    from hardmine.integrations.torchvision import with_sampler
    from hardmine.sampling import OHEMSampler

    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=..., num_classes=...)
    with_sampler(model, OHEMSampler())

`with_sampler` replaces `model.roi_heads` with hardmine's RoI head (`TorchvisionRoIHead`), built from
the model's own `box_roi_pool`, `box_head` and `box_predictor` (the same module objects, so
pretrained or trained weights are kept) and its box-coder weights, `score_thresh`, `nms_thresh` and
`detections_per_img`. The transform, the backbone and the RPN are untouched, and the model is
called as before: training returns a dict of losses, evaluation torchvision-style detections.

What changes, on purpose:

* the sampler decides which RoIs train the head; torchvision's `box_batch_size_per_image` and
  `box_positive_fraction` (its random fg:bg sampler) no longer apply;
* the RoI losses are named `loss_roi_cls` and `loss_roi_box` (torchvision: `loss_classifier`,
  `loss_box_reg`); both are normalised as torchvision's, by the number of sampled RoIs;
* foreground / background IoU thresholds: see `with_sampler`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from hardmine.models.roi_head import RoIHead
from hardmine.sampling.base import IoUThresholds, Sampler

#: RoIHead arguments that always come from the torchvision model or from `with_sampler` itself.
_TAKEN_FROM_MODEL = frozenset({"box_roi_pool", "box_head", "box_predictor", "sampler"})


class TorchvisionRoIHead(RoIHead):
    """hardmine's RoI head behind torchvision's `RoIHeads` call convention.

    `GeneralizedRCNN.forward` calls `roi_heads(features, proposals, images.image_sizes, targets)`:
    the same signature as `RoIHead.forward`. `features` is the backbone's OrderedDict, extra levels
    such as "pool" included; the RoI pooling picks its own `featmap_names`. Training returns no
    detections (torchvision's `transform.postprocess` passes them through) and evaluation returns
    "boxes", "labels", "scores" per image in the resized frame, which `postprocess` maps back.

    On top of `RoIHead` it checks the targets as torchvision's head does, and rejects
    "ignore_boxes": torchvision's transform resizes "boxes" only, so ignore regions would silently
    stay in original image coordinates. Per-box "weights" pass the transform unchanged and work.
    """

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if targets is not None:
            _check_targets(targets)
        return super().forward(features, proposals, image_shapes, targets)


def _check_targets(targets: list[dict[str, Tensor]]) -> None:
    """torchvision's target checks (float boxes, int64 labels), plus no "ignore_boxes"."""
    for target in targets:
        if "labels" not in target:
            raise ValueError("every target needs a 'labels' entry")
        if not target["boxes"].is_floating_point():
            raise TypeError(f"target boxes must be of float type, got {target['boxes'].dtype}")
        if target["labels"].dtype != torch.int64:
            raise TypeError(f"target labels must be of int64 type, got {target['labels'].dtype}")
        if "ignore_boxes" in target:
            raise ValueError(
                "'ignore_boxes' is not supported in a torchvision model: its transform resizes 'boxes' "
                "only, so the ignore regions would stay in original image coordinates"
            )


def with_sampler(
    model: FasterRCNN, sampler: Sampler, keep_sampler_thresholds: bool = False, **roi_head_options: Any
) -> FasterRCNN:
    """Replace `model.roi_heads` in place by hardmine's RoI head driven by `sampler`; return `model`.

    model:   a torchvision `FasterRCNN` (any builder: ResNet-50 FPN, MobileNetV3, custom backbone).
             Mask R-CNN and Keypoint R-CNN are rejected (ValueError): hardmine's head trains boxes
             only. Anything else, or a model whose head was already replaced, raises TypeError.
    sampler: any hardmine sampler, e.g. `OHEMSampler()`; it becomes the head's (`model.roi_heads.sampler`,
             whose `last_stats` hold its per-iteration diagnostics).
    roi_head_options: further `RoIHead` arguments (`cls_loss`, `reg_loss`: entries of
             `hardmine.losses.CLS_LOSSES` / `REG_LOSSES` such as `SoftmaxFocal(gamma=1.0)`;
             `add_gt_as_proposals`), or overrides of the settings taken from the model
             (`box_coder_weights`, `score_thresh`, `nms_thresh`, `detections_per_img`).

    keep_sampler_thresholds: by default `sampler.thresholds` is set to the model's labelling, so
             RoIs are labelled exactly as torchvision's head labelled them: foreground at IoU >=
             `box_fg_iou_thresh`, background at IoU in [0, `box_bg_iou_thresh`), ignored in between.
             With torchvision's defaults (0.5, 0.5) that is also the OHEM paper's labelling
             (bg_lo = 0). True keeps the sampler's own thresholds.
    """
    roi_heads = _supported_roi_heads(model)
    if not isinstance(sampler, Sampler):
        raise TypeError(
            f"sampler must be a hardmine Sampler (e.g. OHEMSampler()), got {type(sampler).__name__}"
        )
    reserved = _TAKEN_FROM_MODEL & roi_head_options.keys()
    if reserved:
        raise TypeError(
            f"{sorted(reserved)} cannot be passed: the head reuses the model's modules and takes the "
            "sampler as the second argument"
        )
    if not keep_sampler_thresholds:
        sampler.thresholds = _model_thresholds(roi_heads)
    settings: dict[str, Any] = {
        "box_coder_weights": tuple(roi_heads.box_coder.weights),
        "score_thresh": roi_heads.score_thresh,
        "nms_thresh": roi_heads.nms_thresh,
        "detections_per_img": roi_heads.detections_per_img,
    }
    head = TorchvisionRoIHead(
        roi_heads.box_roi_pool,
        roi_heads.box_head,
        roi_heads.box_predictor,
        sampler,
        **{**settings, **roi_head_options},
    )
    head.train(roi_heads.training)
    model.roi_heads = head
    return model


def _supported_roi_heads(model: FasterRCNN) -> RoIHeads:
    """The model's torchvision `RoIHeads`, or a clear error when the model is not supported."""
    if not isinstance(model, FasterRCNN):
        raise TypeError(
            f"with_sampler needs a torchvision.models.detection.FasterRCNN, got {type(model).__name__}"
        )
    roi_heads = model.roi_heads
    if isinstance(roi_heads, RoIHead):
        raise TypeError(
            "model.roi_heads is already hardmine's RoI head; to change the sampler, assign "
            "model.roi_heads.sampler"
        )
    if not isinstance(roi_heads, RoIHeads):
        raise TypeError(f"model.roi_heads must be torchvision's RoIHeads, got {type(roi_heads).__name__}")
    for branch, present in (("mask", roi_heads.has_mask()), ("keypoint", roi_heads.has_keypoint())):
        if present:
            raise ValueError(
                f"{type(model).__name__} has a {branch} head; hardmine's RoI head trains boxes only, "
                "so only plain Faster R-CNN models are supported"
            )
    return roi_heads


def _model_thresholds(roi_heads: RoIHeads) -> IoUThresholds:
    """torchvision's proposal labelling: fg at IoU >= high, bg at IoU in [0, low), ignored between."""
    matcher = roi_heads.proposal_matcher
    return IoUThresholds(fg=matcher.high_threshold, bg_lo=0.0, bg_hi=matcher.low_threshold)
