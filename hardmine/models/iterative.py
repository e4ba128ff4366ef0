"""Iterative bounding-box regression at test time (Gidaris & Komodakis, ICCV 2015; OHEM paper, sec. 6).

The RoI head scores its proposals and regresses them to class-specific boxes R1 (its usual
output). With `rounds` = T > 0, the boxes of round t that score above the head's `score_thresh`
become RoIs again: each is re-scored for its own class and re-regressed with that class's
deltas, giving R(t+1). The detections of every round, (score of the input box, regressed box),
are merged: per-class NMS at `nms_thresh` (the paper: 0.3) and, with `box_voting`, each kept box
replaced by the score-weighted mean of the boxes of its class overlapping it at IoU >= `voting_iou`
(the paper: 0.5). The OHEM paper uses one extra round (T = 1).

Cost: each round runs RoIAlign and the box head once more over the surviving boxes (at most the
boxes above `score_thresh`, typically far fewer than the proposals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import clip_boxes_to_image, remove_small_boxes

from hardmine.models.merge import merge_detections
from hardmine.models.priors import score_thresholds
from hardmine.options import opt, require


class RoIHead(Protocol):
    """What the rounds use of the RoI head (`hardmine.models.roi_head.RoIHead`)."""

    box_coder: BoxCoder
    score_thresh: float
    detections_per_img: int

    def predict(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]: ...


#: Boxes narrower or lower than this (pixels) are dropped, as in the head's own post-processing.
MIN_BOX_SIZE = 1e-2


@dataclass
class ClassBoxes:
    """One image's class-specific detections of one round: boxes [K, 4], scores [K], labels [K]."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def keep(self, index: Tensor) -> ClassBoxes:
        return ClassBoxes(self.boxes[index], self.scores[index], self.labels[index])


def first_round(
    head: RoIHead,
    logits: Tensor,
    deltas: Tensor,
    proposals: list[Tensor],
    image_shapes: list[tuple[int, int]],
) -> list[ClassBoxes]:
    """The head's detections before NMS (also its `_postprocess`): every (proposal, class) pair
    scoring above the head's threshold, the proposal regressed by that class's deltas and clipped."""
    num_classes = logits.shape[-1]
    sizes = [p.shape[0] for p in proposals]
    boxes_all = head.box_coder.decode(deltas, proposals).split(sizes)
    scores_all = F.softmax(logits.float(), -1).split(sizes)
    out = []
    for boxes, scores, shape in zip(boxes_all, scores_all, image_shapes):
        boxes = clip_boxes_to_image(boxes, shape)[:, 1:].reshape(-1, 4)
        labels = torch.arange(1, num_classes, device=scores.device).expand(scores.shape[0], -1).reshape(-1)
        out.append(_above_threshold(head, ClassBoxes(boxes, scores[:, 1:].reshape(-1), labels)))
    return out


def refine_round(
    head: RoIHead,
    features: dict[str, Tensor],
    previous: list[ClassBoxes],
    image_shapes: list[tuple[int, int]],
) -> list[ClassBoxes]:
    """Re-score each box of `previous` for its own class and re-regress it with that class's deltas."""
    logits, deltas = head.predict(features, [d.boxes for d in previous], image_shapes)
    sizes = [d.boxes.shape[0] for d in previous]
    out = []
    for d, image_logits, image_deltas, shape in zip(
        previous, logits.split(sizes), deltas.split(sizes), image_shapes
    ):
        rows = torch.arange(d.labels.numel(), device=d.labels.device)
        scores = F.softmax(image_logits.float(), -1)[rows, d.labels]
        class_deltas = image_deltas.reshape(-1, image_logits.shape[-1], 4)[rows, d.labels]
        boxes = clip_boxes_to_image(head.box_coder.decode_single(class_deltas, d.boxes), shape)
        out.append(_above_threshold(head, ClassBoxes(boxes, scores.to(d.scores.dtype), d.labels)))
    return out


def _above_threshold(head: RoIHead, d: ClassBoxes) -> ClassBoxes:
    """The boxes scoring above the head's threshold (its per-class thresholds where it has them)
    and not degenerate."""
    thresh = score_thresholds(
        getattr(head, "class_score_thresh", None), head.score_thresh, "roi_head.class_adaptive_thresh"
    )
    if isinstance(thresh, Tensor):
        thresh = thresh[d.labels - 1]
    d = d.keep(torch.nonzero(d.scores > thresh).flatten())
    return d.keep(remove_small_boxes(d.boxes, min_size=MIN_BOX_SIZE))


@dataclass
class IterativeRegression:
    """Test-time iterative box regression of a RoI head (the config section `roi_head.iterative`);
    see the module docstring. The paper's values are the defaults, except `rounds`, off (0)."""

    rounds: int = opt(
        0, "test time: rounds re-scoring and re-regressing the head's own boxes; 0 = off (OHEM paper: 1)"
    )
    nms_thresh: float = opt(0.3, "per-class NMS IoU merging the detections of all rounds (paper: 0.3)")
    box_voting: bool = opt(
        True, "replace each kept box by the score-weighted mean of its class's boxes overlapping it"
    )
    voting_iou: float = opt(0.5, "box voting: boxes overlapping a kept box at IoU >= this vote (paper: 0.5)")

    def __post_init__(self) -> None:
        require(self.rounds >= 0, "rounds", "must be >= 0 (0 = off)")
        for name in ("nms_thresh", "voting_iou"):
            require(0.0 < getattr(self, name) <= 1.0, name, "must be in (0, 1]")

    @torch.no_grad()
    def __call__(
        self,
        head: RoIHead,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections per image (resized-image coordinates), merged over the rounds."""
        logits, deltas = head.predict(features, proposals, image_shapes)
        rounds = [first_round(head, logits, deltas, proposals, image_shapes)]
        for _ in range(self.rounds):
            rounds.append(refine_round(head, features, rounds[-1], image_shapes))
        out = []
        for per_round in zip(*rounds):
            out.append(
                merge_detections(
                    torch.cat([d.boxes for d in per_round]),
                    torch.cat([d.scores for d in per_round]),
                    torch.cat([d.labels for d in per_round]),
                    self.nms_thresh,
                    head.detections_per_img,
                    vote_iou=self.voting_iou if self.box_voting else None,
                )
            )
        return out
