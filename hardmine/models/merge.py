"""Merging overlapping detections: per-class NMS, optionally followed by box voting.

Used where one image has several sets of detections to reconcile: the passes of multi-scale /
flip testing (`hardmine.engine.tta`) and the rounds of iterative box regression
(`hardmine.models.iterative`). Box voting is the post-processing of Gidaris & Komodakis
(MR-CNN, ICCV 2015) that the OHEM paper adopts: after NMS, each kept box is replaced by the
score-weighted average of the boxes of its class that overlap it at IoU >= `vote_iou` (itself
included); its score stays the kept box's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

#: Merge methods of multi-scale testing (`eval.merge`).
MERGE_METHODS = ("nms", "vote")


def box_voting(
    kept_boxes: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, vote_iou: float
) -> Tensor:
    """Each kept box [K, 4] replaced by the score-weighted mean of the `boxes` [N, 4] of the same
    label that overlap it at IoU >= `vote_iou`. A kept box is one of `boxes`, so it always votes
    for itself; if every weight is 0 (scores of 0) the kept box stays as it is."""
    if kept_boxes.numel() == 0 or boxes.numel() == 0:
        return kept_boxes
    overlap = box_iou(kept_boxes, boxes) >= vote_iou
    weights = (overlap & (kept_labels[:, None] == labels[None, :])) * scores[None, :]  # [K, N]
    total = weights.sum(dim=1, keepdim=True)
    voted = (weights @ boxes) / total.clamp_min(torch.finfo(boxes.dtype).tiny)
    return torch.where(total > 0, voted, kept_boxes)


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    nms_thresh: float,
    max_detections: int,
    vote_iou: float | None = None,
) -> dict[str, Tensor]:
    """Per-class NMS at `nms_thresh` over the detections (boxes [N, 4], scores [N], labels [N]),
    then, with `vote_iou` set, box voting among all N; the best `max_detections` by score.

    Returns {"boxes", "scores", "labels"}, sorted by decreasing score.
    """
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
    kept = boxes[keep]
    if vote_iou is not None:
        kept = box_voting(kept, labels[keep], boxes, scores, labels, vote_iou)
    return {"boxes": kept, "scores": scores[keep], "labels": labels[keep]}


def concat_detections(detections: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """One image's detection sets ({"boxes", "scores", "labels"} each) as three concatenated tensors."""
    return (
        torch.cat([d["boxes"] for d in detections]),
        torch.cat([d["scores"] for d in detections]),
        torch.cat([d["labels"] for d in detections]),
    )
