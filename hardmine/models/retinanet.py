"""A RetinaNet-style one-stage detector around hardmine's `DenseHead`.

Transform, backbone and anchors are torchvision's building blocks; the dense head runs on every
level the backbone returns (the max-pool level included). Inference follows torchvision's
RetinaNet: per level the `topk_candidates` best (anchor, class) scores above `score_thresh`, decoded,
clipped, class-wise NMS, then the best `detections_per_img`. A head with class-adaptive
thresholds (sampling-free training) uses its per-class `class_score_thresh` instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import batched_nms, clip_boxes_to_image

from hardmine.models.dense_head import DenseHead
from hardmine.models.priors import score_thresholds
from hardmine.models.transform import DetectionTransform


class RetinaNet(nn.Module):
    """One-stage detector; torchvision's call convention.

    `model(images, targets)`: images a list of float [3, H, W] tensors in [0, 1]; targets dicts with
    "boxes" (xyxy pixels), "labels" (1..C) and optional "ignore_boxes", "weights". Training returns
    the dense head's losses; evaluation a list of dicts with "boxes", "scores", "labels" (1..C) in
    original image coordinates.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: DenseHead,
        anchor_generator: AnchorGenerator,
        transform: DetectionTransform,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        per_location = set(anchor_generator.num_anchors_per_location())
        if per_location != {head.num_anchors}:
            raise ValueError(
                f"the anchor generator makes {sorted(per_location)} anchors per location but the head "
                f"predicts {head.num_anchors}; every level needs the same number"
            )
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.transform = transform
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    @property
    def heads(self) -> dict[str, nn.Module]:
        """The heads that sample candidates, by the name used in logs and diagnostics."""
        return {"dense": self.head}

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        if targets is not None:
            targets = [dict(t) for t in targets]
        image_list, targets = self.transform(images, targets)
        features = list(self.backbone(image_list.tensors).values())
        cls_logits, deltas = self.head(features)
        anchors = self.anchor_generator(image_list, features)
        if self.training:
            assert targets is not None
            return self.head.loss(cls_logits, deltas, anchors, targets)
        per_level = [f.shape[-2] * f.shape[-1] * self.head.num_anchors for f in features]
        detections = self.postprocess(cls_logits, deltas, anchors, per_level, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    @torch.no_grad()
    def postprocess(
        self,
        cls_logits: Tensor,
        deltas: Tensor,
        anchors: list[Tensor],
        anchors_per_level: list[int],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections per image in resized-image coordinates (see the module docstring)."""
        num_classes = cls_logits.shape[-1]
        # Per-class thresholds of sampling-free training ([C], broadcast over anchors), else the fixed one.
        thresh = score_thresholds(
            self.head.class_score_thresh, self.score_thresh, "dense_head.class_adaptive_thresh"
        )
        out = []
        for logits, image_deltas, image_anchors, size in zip(cls_logits, deltas, anchors, image_sizes):
            boxes_all, scores_all, labels_all = [], [], []
            for level_logits, level_deltas, level_anchors in zip(
                logits.split(anchors_per_level),
                image_deltas.split(anchors_per_level),
                image_anchors.split(anchors_per_level),
            ):
                probs = torch.sigmoid(level_logits.float())
                candidates = torch.nonzero((probs > thresh).flatten()).flatten()
                scores = probs.flatten()
                scores, order = scores[candidates].topk(min(self.topk_candidates, candidates.numel()))
                candidates = candidates[order]
                anchor_idx = candidates // num_classes
                boxes = self.head.box_coder.decode_single(
                    level_deltas[anchor_idx].float(), level_anchors[anchor_idx]
                )
                boxes_all.append(clip_boxes_to_image(boxes, size))
                scores_all.append(scores)
                labels_all.append(candidates % num_classes + 1)
            boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return out
