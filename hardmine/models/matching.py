"""Matching candidates (anchors, RoIs) to ground truth, producing `hardmine.sampling.Candidates`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou

from hardmine.sampling.base import Candidates, SampleResult

#: A candidate whose area lies more than this fraction inside an ignore region is never background.
IGNORE_IOF = 0.5


@dataclass
class Match:
    """The match of one image's candidates.

    ious:       [N] best IoU with a ground-truth box (0 when the image has none).
    matched:    [N] index of that ground-truth box (0 when none; check `gt_labels`).
    gt_labels:  [N] class label of that box (0 when none).
    ignore:     [N] bool, candidate mostly inside an ignore region.
    force_fg:   [N] bool, candidate is the best match of some ground truth (low-quality match).
    """

    ious: Tensor
    matched: Tensor
    gt_labels: Tensor
    ignore: Tensor
    force_fg: Tensor


def intersection_over_foreground(boxes: Tensor, regions: Tensor) -> Tensor:
    """[N, M] fraction of each box's area that lies inside each region."""
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / box_area(boxes).clamp(min=1e-6)[:, None]


def match_boxes(
    boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    ignore_boxes: Tensor | None = None,
    low_quality_min_iou: float | None = None,
) -> Match:
    """Match every candidate box to its best ground truth.

    With `low_quality_min_iou` set, each ground truth's best-overlapping candidates (ties included)
    are flagged `force_fg` when that overlap is at least the given IoU, as in Faster R-CNN's RPN.
    """
    n = boxes.shape[0]
    device = boxes.device
    if gt_boxes.numel() == 0:
        ious = torch.zeros(n, device=device, dtype=boxes.dtype)
        matched = torch.zeros(n, device=device, dtype=torch.long)
        labels = torch.zeros(n, device=device, dtype=torch.long)
        force_fg = torch.zeros(n, device=device, dtype=torch.bool)
    else:
        iou = box_iou(gt_boxes, boxes)  # [G, N]
        ious, matched = iou.max(dim=0)
        labels = gt_labels[matched]
        if low_quality_min_iou is not None:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            hits = (iou == best_per_gt) & (best_per_gt >= low_quality_min_iou) & (best_per_gt > 0)
            gt_idx, cand_idx = torch.nonzero(hits, as_tuple=True)
            force_fg = torch.zeros(n, device=device, dtype=torch.bool)
            force_fg[cand_idx] = True
            # A forced candidate is assigned to the ground truth it is best for.
            matched[cand_idx] = gt_idx
            labels = gt_labels[matched]
        else:
            force_fg = torch.zeros(n, device=device, dtype=torch.bool)
    if ignore_boxes is not None and ignore_boxes.numel() > 0:
        ignore = intersection_over_foreground(boxes, ignore_boxes).max(dim=1).values > IGNORE_IOF
    else:
        ignore = torch.zeros(n, device=device, dtype=torch.bool)
    return Match(ious=ious, matched=matched, gt_labels=labels, ignore=ignore, force_fg=force_fg)


def candidates_from_matches(matches: list[Match], boxes: list[Tensor]) -> Candidates:
    """The sampler's view of one batch: per image, the candidates' matches and boxes."""
    return Candidates(
        ious=[m.ious for m in matches],
        gt_labels=[m.gt_labels for m in matches],
        boxes=boxes,
        ignore=[m.ignore for m in matches],
        force_fg=[m.force_fg for m in matches],
        gt_index=[m.matched for m in matches],
    )


def matched_boxes(match: Match, gt_boxes: Tensor, indices: Tensor | None = None) -> Tensor:
    """Ground-truth box matched to each candidate (or to `indices`); zeros when the image has none."""
    matched = match.matched if indices is None else match.matched[indices]
    if gt_boxes.numel() == 0:
        return torch.zeros((matched.numel(), 4), dtype=gt_boxes.dtype, device=gt_boxes.device)
    return gt_boxes[matched]


def candidate_box_weights(match: Match, target: dict[str, Tensor], labels: Tensor) -> Tensor | None:
    """[N] loss weight of every candidate from the per-box "weights" (mixup): the matched box's
    weight where `labels` marks foreground (> 0), 1 elsewhere; None when the target has no weights.

    Loss-ranking samplers (OHEM, hard negatives) rank by these weighted losses, the losses the
    selected candidates are then trained with, so a weight-0 box never makes its candidates "hard".
    """
    box_weights = target.get("weights")
    if box_weights is None or box_weights.numel() == 0:
        return None
    out = torch.ones(labels.shape, dtype=box_weights.dtype, device=labels.device)
    fg = labels > 0
    out[fg] = box_weights[match.matched[fg]]
    return out


def sample_weights(
    results: list[SampleResult], matches: list[Match], targets: list[dict[str, Tensor]], dtype: torch.dtype
) -> Tensor:
    """Per-sample loss weight: the sampler's weight times the matched box's weight (foreground)."""
    out = []
    for r, m, t in zip(results, matches, targets):
        if r.weights is not None:
            w = r.weights.to(dtype)
        else:
            w = torch.ones(r.indices.numel(), dtype=dtype, device=r.indices.device)
        box_weights = t.get("weights")
        if box_weights is not None and box_weights.numel():
            fg = r.labels > 0
            w = w.clone()
            w[fg] = w[fg] * box_weights[m.matched[r.indices[fg]]].to(dtype)
        out.append(w)
    return torch.cat(out)
