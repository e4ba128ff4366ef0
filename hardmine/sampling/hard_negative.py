"""Hard negative mining (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016).

A dense detector sees tens of thousands of background candidates per object. SSD trains on every
foreground candidate and only on the background candidates it currently classifies worst, at most
three per foreground one. `HardNegativeSampler.select`, per image:

1. asks the head once for every candidate's loss (`score_fn`: a read-only pass without autograd);
2. keeps all foreground candidates, whatever their loss;
3. ranks the background candidates by classification loss (SSD's confidence loss) and keeps the
   top int(neg_pos_ratio * num_fg), but at least `min_negatives_per_image` and never more than the
   image has; ignored candidates are never taken.

The defaults are the paper's: foreground at IoU >= 0.5, background at IoU in [0, 0.5)
(`paper_bg_iou_lo`, used where a head leaves its `bg_iou_lo` unset) and a 3:1 negative:positive
ratio. Unlike OHEM there is no NMS, no batch-wide budget and no box loss in the ranking: the
foreground is kept entirely and the mining only bounds the background.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from hardmine.options import opt, require
from hardmine.sampling.base import Candidates, IoUThresholds, Sampler, SampleResult, ScoreFn, take


@dataclass
class HardNegativeSampler(Sampler):
    """All foreground plus the hardest background by classification loss (see the module).

    `min_negatives_per_image` defaults to 16. SSD's formula alone gives an image without objects
    no negatives at all, so background-only images would never teach the head what is not an
    object. On the built-in dataset a ground-truth box matches about 2.6 anchors of the tiny
    RetinaNet at IoU >= 0.5, so 16 negatives are what an image with two objects earns at 3:1: an
    empty image weighs like a sparse one (a typical image, 8 objects, earns about 60) instead of
    like nothing, and the floor stays far below the budget of images with objects, more so in an
    RoI head where each object has many foreground RoIs. TensorFlow's Object Detection API has the
    same floor in its hard example miner (`min_negatives_per_image`).

    Ties in loss are broken deterministically: higher loss first, then lower candidate index. The
    selected indices are returned in ascending order.

    `last_stats` after each call, over the batch: num_candidates (eligible: foreground or
    background), num_selected, num_fg, num_bg, mean_loss_all (classification loss of the eligible
    candidates) and mean_loss_selected; empty means are 0.
    """

    thresholds: IoUThresholds = field(default_factory=lambda: IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5))
    neg_pos_ratio: float = opt(3.0, "hardest background kept per foreground candidate (paper: 3)")
    min_negatives_per_image: int = opt(
        16, "background kept in any image, even one without objects (the paper has none: 0)"
    )

    name: ClassVar[str] = "hard_negative"
    needs_scores = True
    paper_bg_iou_lo = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.neg_pos_ratio >= 0, "neg_pos_ratio", "must be >= 0")
        require(self.min_negatives_per_image >= 0, "min_negatives_per_image", "must be >= 0")

    def select(
        self, labels: list[Tensor], candidates: Candidates, score_fn: ScoreFn | None
    ) -> list[SampleResult]:
        """All foreground and the hardest background of each image; sets `last_stats`."""
        if score_fn is None:
            raise ValueError("HardNegativeSampler ranks candidates by loss and needs a score_fn")
        losses = score_fn(labels)
        if len(losses) != len(labels) or any(lo.cls.shape != la.shape for lo, la in zip(losses, labels)):
            raise ValueError("score_fn must return one CandidateLosses per image with one loss per candidate")
        scores = [image_losses.cls.detach().float() for image_losses in losses]
        picks = [self._pick(image_labels, score) for image_labels, score in zip(labels, scores)]
        results = [take(image_labels, pick) for image_labels, pick in zip(labels, picks)]
        self._set_stats(labels, scores, picks)
        return results

    def _pick(self, labels: Tensor, score: Tensor) -> Tensor:
        """One image's selection, ascending: all foreground and the top background by `score`."""
        fg = torch.nonzero(labels > 0).flatten()
        bg = torch.nonzero(labels == 0).flatten()
        wanted = max(int(self.neg_pos_ratio * fg.numel()), self.min_negatives_per_image)
        # A stable sort keeps equal losses in index order, so ties go to the lower index.
        hardest = bg[torch.sort(score[bg], descending=True, stable=True).indices[:wanted]]
        return torch.cat([fg, hardest]).sort().values

    def _set_stats(self, labels: list[Tensor], scores: list[Tensor], picks: list[Tensor]) -> None:
        """Counts and mean classification losses of this call, with a single host sync for the sums."""
        eligible = torch.cat([image_labels >= 0 for image_labels in labels])
        selected_fg = torch.cat([image_labels[pick] > 0 for image_labels, pick in zip(labels, picks)])
        num_eligible, num_fg, loss_all, loss_selected = torch.stack(
            [
                eligible.sum().float(),
                selected_fg.sum().float(),
                torch.cat(scores)[eligible].sum(),
                torch.cat([score[pick] for score, pick in zip(scores, picks)]).sum(),
            ]
        ).tolist()
        num_selected = sum(pick.numel() for pick in picks)
        self.last_stats = {
            "num_candidates": num_eligible,
            "num_selected": float(num_selected),
            "num_fg": num_fg,
            "num_bg": num_selected - num_fg,
            "mean_loss_all": loss_all / num_eligible if num_eligible else 0.0,
            "mean_loss_selected": loss_selected / num_selected if num_selected else 0.0,
        }
