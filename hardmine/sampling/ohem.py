"""Online hard example mining, OHEM (Shrivastava, Gupta, Girshick, "Training Region-based Object
Detectors with Online Hard Example Mining", CVPR 2016).

Instead of drawing candidates at random with a fixed fg:bg ratio, OHEM trains a head on the
candidates it currently gets most wrong. `OHEMSampler.select`:

1. asks the head once for every candidate's loss (`score_fn`: a read-only pass without autograd);
2. keeps the eligible candidates, those with an assigned label >= 0 (foreground or background,
   never ignored), with no fg:bg ratio;
3. ranks them by classification loss, or classification + box-regression loss (`rank_by`);
4. removes near-duplicates by NMS at IoU `nms_thresh` with the loss as the score, per image and per
   assigned label (background is a group of its own), so that one hard object cannot fill the
   batch with shifted copies of itself;
5. keeps the top B by loss of each image (`per_image`, the default) or the top B * num_images
   pooled over the batch, optionally with at most a fraction `fg_fraction` of B foreground
   (background fills the rest).

The defaults reproduce the paper: foreground at IoU >= 0.5, background at IoU in [0, 0.5)
(bg_lo = 0, not Fast R-CNN's 0.1: `paper_bg_iou_lo`, used where a head leaves its `bg_iou_lo` unset),
ranking by cls + box loss, NMS at 0.7, the top B / N = 64 RoIs of each image (the paper's B = 128
over N = 2 images: it takes "the B/N examples" of each image, and its released code ran one image
per pass with `iter_size: 2`) and no foreground quota. Pooling over the batch, where one image can
take every slot, is an option. `mode` tells the heads how to train the selection
(`trains_by_loss_mask`), by a second pass with autograd over the selected candidates only
("two_pass", the paper's form) or by one pass over all candidates with the others' losses zeroed
("loss_mask", the naive variant kept for comparison); the selection itself is the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from hardmine.options import opt, require
from hardmine.sampling.base import (
    SCORING_PASSES,
    CandidateLosses,
    Candidates,
    IoUThresholds,
    Sampler,
    SampleResult,
    ScoreFn,
    take,
)

RANK_BY = ("cls", "cls+box")
MODES = ("two_pass", "loss_mask")


@dataclass
class OHEMSampler(Sampler):
    """Keep the eligible candidates with the highest loss after NMS on that loss (see the module).

    Ties in loss are broken deterministically, in NMS and in the top-B alike: higher loss first,
    then lower image index, then lower candidate index. The selection is therefore a pure function
    of the labels, boxes and losses.

    `last_stats` after each call: num_candidates (eligible), num_removed_by_nms, num_nms_examined
    (NMS stops once the hardest candidates hold enough survivors, so the removals are counted among
    those), num_selected, num_fg, num_bg, mean_loss_all (ranking loss over the eligible candidates)
    and mean_loss_selected; empty means are 0.
    """

    thresholds: IoUThresholds = field(default_factory=lambda: IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5))
    batch_size_per_image: int = opt(64, "B per image (paper: B/N = 128 / 2)")
    per_image: bool = opt(
        True, "the top B of each image (paper); false = the top B x images pooled over the whole batch"
    )
    nms_thresh: float | None = opt(
        0.7, "NMS IoU among candidates, loss as score, per image and label; null = off"
    )
    rank_by: str = opt("cls+box", "loss terms that rank candidates", RANK_BY)
    fg_fraction: float | None = opt(
        None, "optional quota: at most this fraction of B (an image's or the batch's) foreground; null = none"
    )
    mode: str = opt(
        "two_pass",
        "two_pass (read-only pass, then train on B) or loss_mask (naive: one pass, others' losses zeroed)",
        MODES,
    )

    score_pass: str = opt(
        "exact",
        "the read-only pass that ranks the RoIs: exact, or cheaper (opt-in): bf16 box head, coarse "
        "RoIAlign (1 sampling point per bin), bf16_coarse; RoI heads only (docs/hard-sampling.md)",
        SCORING_PASSES,
    )

    name: ClassVar[str] = "ohem"
    needs_scores = True
    paper_bg_iou_lo = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.batch_size_per_image > 0, "batch_size_per_image", "must be > 0")
        require(
            self.nms_thresh is None or 0.0 < self.nms_thresh <= 1.0, "nms_thresh", "must be in (0, 1] or null"
        )
        require(
            self.fg_fraction is None or 0.0 <= self.fg_fraction <= 1.0,
            "fg_fraction",
            "must be in [0, 1] or null",
        )

    @property
    def trains_by_loss_mask(self) -> bool:
        return self.mode == "loss_mask"

    @property
    def scoring(self) -> str:
        return self.score_pass

    def select(
        self, labels: list[Tensor], candidates: Candidates, score_fn: ScoreFn | None
    ) -> list[SampleResult]:
        """Top-B eligible candidates by loss after NMS; sets `last_stats`."""
        if score_fn is None:
            raise ValueError("OHEMSampler ranks candidates by loss and needs a score_fn")
        losses = score_fn(labels)
        if len(losses) != len(labels) or any(
            lo.cls.shape != la.shape or lo.box.shape != la.shape for lo, la in zip(losses, labels)
        ):
            raise ValueError("score_fn must return one CandidateLosses per image with one loss per candidate")
        scores = [self._ranking_loss(image_losses) for image_losses in losses]
        eligible = [torch.nonzero(image_labels >= 0).flatten() for image_labels in labels]
        # In per-batch mode one image may fill the whole batch.
        budget = self.batch_size_per_image * (1 if self.per_image else len(labels))
        ranked, examined = [], []
        for idx, image_labels, score, boxes in zip(eligible, labels, scores, candidates.boxes):
            survivors, num_examined = self._ranked_survivors(idx, image_labels, score, boxes, budget)
            ranked.append(survivors)
            examined.append(num_examined)
        if self.per_image:
            picks = self._top_per_image(ranked, labels, budget)
        else:
            picks = self._top_per_batch(ranked, labels, scores, budget)
        results = [take(image_labels, pick) for image_labels, pick in zip(labels, picks)]
        self._set_stats(results, eligible, ranked, examined, scores, picks)
        return results

    def _ranking_loss(self, losses: CandidateLosses) -> Tensor:
        """[N] detached float loss that ranks one image's candidates."""
        loss = losses.cls if self.rank_by == "cls" else losses.total
        return loss.detach().float()

    def _ranked_survivors(
        self, idx: Tensor, labels: Tensor, score: Tensor, boxes: Tensor, budget: int
    ) -> tuple[Tensor, int]:
        """One image's eligible indices (`idx`) that survive NMS, by loss descending, and the number
        of candidates NMS examined.

        Greedy NMS decides each candidate from the higher-ranked ones only, so NMS over the hardest k
        candidates gives exactly the survivors a full run keeps among them. k grows until they hold
        enough survivors for any selection from this image (`budget` and the fg quota), which keeps
        OHEM over 100k anchors cheap.
        """
        idx = idx[torch.sort(score[idx], descending=True, stable=True).indices]
        if self.nms_thresh is None:
            return idx, 0
        k = 4 * budget
        while True:
            head = idx[:k]
            # NMS only depends on the order of its scores: ranks instead of losses make it follow
            # the documented tie-breaking rather than the NMS kernel's own.
            ranks = torch.arange(head.numel(), 0, -1, device=idx.device, dtype=torch.float32)
            keep = batched_nms(boxes[head].float(), ranks, labels[head], self.nms_thresh)
            survivors = head[keep.sort().values]
            if head.numel() == idx.numel() or self._enough(labels[survivors] > 0, budget):
                return survivors, head.numel()
            k *= 4

    def _enough(self, is_fg: Tensor, budget: int) -> bool:
        """Whether ranked survivors (`is_fg`: which are foreground) fill any selection of `budget`."""
        if self.fg_fraction is None:
            return is_fg.numel() >= budget
        num_fg = int(is_fg.sum())
        return num_fg >= int(budget * self.fg_fraction) and is_fg.numel() - num_fg >= budget

    def _top_per_image(self, ranked: list[Tensor], labels: list[Tensor], budget: int) -> list[Tensor]:
        """The first `budget` of each image's ranked survivors (within the quota), ascending."""
        return [
            idx[self._top_mask(image_labels[idx] > 0, budget)].sort().values
            for idx, image_labels in zip(ranked, labels)
        ]

    def _top_per_batch(
        self, ranked: list[Tensor], labels: list[Tensor], scores: list[Tensor], budget: int
    ) -> list[Tensor]:
        """The first `budget` of all images' ranked survivors (within the quota), split per image."""
        image = torch.cat([torch.full_like(idx, i) for i, idx in enumerate(ranked)])
        idx = torch.cat(ranked)
        is_fg = torch.cat([image_labels[r] > 0 for image_labels, r in zip(labels, ranked)])
        # Each image's survivors are ranked already and the images are concatenated in order, so a
        # stable sort by loss orders the pool by loss, then image, then candidate index.
        pooled = torch.cat([score[r] for score, r in zip(scores, ranked)])
        order = torch.sort(pooled, descending=True, stable=True).indices
        keep = order[self._top_mask(is_fg[order], budget)]
        image, idx = image[keep], idx[keep]
        return [idx[image == i].sort().values for i in range(len(ranked))]

    def _top_mask(self, is_fg: Tensor, budget: int) -> Tensor:
        """Mask of the candidates kept from a ranked list: the first `budget`, with the fg quota."""
        if self.fg_fraction is None:
            return torch.arange(is_fg.numel(), device=is_fg.device) < budget
        max_fg = int(budget * self.fg_fraction)
        take_fg = is_fg & (torch.cumsum(is_fg, 0) <= max_fg)
        bg_budget = budget - take_fg.sum()
        return take_fg | (~is_fg & (torch.cumsum(~is_fg, 0) <= bg_budget))

    def _set_stats(
        self,
        results: list[SampleResult],
        eligible: list[Tensor],
        ranked: list[Tensor],
        examined: list[int],
        scores: list[Tensor],
        picks: list[Tensor],
    ) -> None:
        """Counts and mean ranking losses of this call, with a single host sync for the sums."""
        num_eligible = sum(idx.numel() for idx in eligible)
        num_selected = sum(pick.numel() for pick in picks)
        num_examined = sum(examined)
        num_removed = num_examined - sum(idx.numel() for idx in ranked) if self.nms_thresh is not None else 0
        loss_all, loss_selected, num_fg = torch.stack(
            [
                torch.cat([score[idx] for score, idx in zip(scores, eligible)]).sum(),
                torch.cat([score[pick] for score, pick in zip(scores, picks)]).sum(),
                torch.cat([r.labels > 0 for r in results]).sum().float(),
            ]
        ).tolist()
        self.last_stats = {
            "num_candidates": float(num_eligible),
            "num_removed_by_nms": float(num_removed),
            "num_nms_examined": float(num_examined),
            "num_selected": float(num_selected),
            "num_fg": num_fg,
            "num_bg": num_selected - num_fg,
            "mean_loss_all": loss_all / num_eligible if num_eligible else 0.0,
            "mean_loss_selected": loss_selected / num_selected if num_selected else 0.0,
        }
