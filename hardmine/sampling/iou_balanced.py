"""IoU-balanced negative sampling (Pang et al., "Libra R-CNN: Towards Balanced Learning for Object
Detection", CVPR 2019).

Random sampling draws background candidates in proportion to how many there are at each IoU, and
most of them barely touch an object (IoU near 0), so the hard negatives near the foreground
threshold are rarely trained. Libra R-CNN splits the background IoU range into K equal-width bins
and draws the same number of negatives from each, which raises the share of hard negatives without
ranking by loss (no scoring pass). `IoUBalancedSampler.select`, per image:

1. draws up to `fg_fraction * B` foreground candidates at random, exactly as `RandomSampler`;
2. gives the background the rest of B (no more than there is background);
3. optionally sets a floor: background below `floor_iou` is not binned and gets `floor_fraction`
   of the background budget, drawn at random;
4. splits the background at or above the floor into `num_bins` equal-width IoU bins, from the floor
   (without one, the lowest background IoU of the image) to the highest background IoU, and draws
   an equal share of the remaining budget uniformly inside each bin;
5. fills what the floor and the bins could not provide (a bin with too few candidates gives all it
   has) at random from the background not yet taken.

The defaults are Libra R-CNN's (as mmdetection's `IoUBalancedNegSampler`: 3 bins, no floor):
B = 512 RoIs per image, 25% foreground, foreground at IoU >= 0.5 and background at IoU in [0, 0.5).
Unlike mmdetection, the highest background IoU falls into the last bin rather than into none, and
without a floor the bins start at the lowest background IoU rather than at -1, so that each of the
K bins covers part of the actual range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from hardmine.options import opt, require
from hardmine.sampling.base import Candidates, IoUThresholds, Sampler, SampleResult, ScoreFn, take


@dataclass
class IoUBalancedSampler(Sampler):
    """Random foreground, IoU-balanced background (see the module).

    Bin k of an image covers IoU [lo + k * w, lo + (k + 1) * w), the last one closed on the right,
    with w = (hi - lo) / num_bins. Each bin's share is int(budget / num_bins) of the budget left
    after the floor; the rounding remainder goes to the random fill. Draws use the global torch RNG,
    so a seeded run selects the same candidates.

    `last_stats` after each call, summed over the batch: num_fg, num_bg, num_bg_bin0 ..
    num_bg_bin{K-1} (selected background per IoU bin, the random fill included) and, with a floor,
    num_bg_floor (selected background below the floor).
    """

    thresholds: IoUThresholds = field(default_factory=lambda: IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5))
    batch_size_per_image: int = opt(512, "B: candidates sampled per image")
    fg_fraction: float = opt(0.25, "largest fraction of B that is foreground, drawn at random")
    num_bins: int = opt(3, "equal-width IoU bins the background is drawn from evenly (paper: 3)")
    floor_iou: float | None = opt(
        None, "background below this IoU is drawn at random, not binned; null = no floor (paper)"
    )
    floor_fraction: float = opt(0.0, "share of the background drawn below floor_iou (paper: 0)")

    name: ClassVar[str] = "iou_balanced"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.batch_size_per_image > 0, "batch_size_per_image", "must be > 0")
        require(0.0 <= self.fg_fraction <= 1.0, "fg_fraction", "must be in [0, 1]")
        require(self.num_bins >= 1, "num_bins", "must be >= 1")
        require(
            self.floor_iou is None or 0.0 < self.floor_iou <= 1.0, "floor_iou", "must be in (0, 1] or null"
        )
        require(0.0 <= self.floor_fraction <= 1.0, "floor_fraction", "must be in [0, 1]")

    def select(
        self, labels: list[Tensor], candidates: Candidates, score_fn: ScoreFn | None
    ) -> list[SampleResult]:
        """Random foreground plus IoU-balanced background per image; sets `last_stats`."""
        results, picked_bins = [], []
        for image_labels, ious in zip(labels, candidates.ious):
            fg = torch.nonzero(image_labels > 0).flatten()
            bg = torch.nonzero(image_labels == 0).flatten()
            num_fg = min(fg.numel(), int(self.batch_size_per_image * self.fg_fraction))
            num_bg = min(bg.numel(), self.batch_size_per_image - num_fg)
            fg = fg[_random_subset(fg.numel(), num_fg, fg.device)]
            bg_bins = self._bins(ious[bg])
            picked = self._balanced(bg_bins, num_bg)
            picked_bins.append(bg_bins[picked])
            results.append(take(image_labels, torch.cat([fg, bg[picked]])))
        self._set_stats(results, picked_bins)
        return results

    def _bins(self, ious: Tensor) -> Tensor:
        """[M] long bin of each background candidate: 0..num_bins-1, or -1 below the floor."""
        bins = torch.full_like(ious, -1, dtype=torch.long)
        binned = torch.ones_like(ious, dtype=torch.bool) if self.floor_iou is None else ious >= self.floor_iou
        if not binned.any():
            return bins
        lo = self.floor_iou if self.floor_iou is not None else ious.min()
        hi = ious[binned].max()
        width = (hi - lo) / self.num_bins
        if width > 0:
            position = ((ious[binned] - lo) / width).floor().long()
        else:  # every binned candidate has the same IoU
            position = torch.zeros_like(ious[binned], dtype=torch.long)
        bins[binned] = position.clamp(max=self.num_bins - 1)
        return bins

    def _balanced(self, bins: Tensor, budget: int) -> Tensor:
        """Positions into one image's background (`bins` from `_bins`) of `budget` draws: the floor's
        share and each bin's equal share at random, then a random fill from the rest."""
        floor_quota = int(budget * self.floor_fraction) if self.floor_iou is not None else 0
        bin_quota = (budget - floor_quota) // self.num_bins
        quotas = [(-1, floor_quota)] + [(k, bin_quota) for k in range(self.num_bins)]
        taken = torch.zeros_like(bins, dtype=torch.bool)
        for group, quota in quotas:
            members = torch.nonzero(bins == group).flatten()
            taken[members[_random_subset(members.numel(), quota, bins.device)]] = True
        rest = torch.nonzero(~taken).flatten()
        num_fill = budget - int(taken.sum())
        taken[rest[_random_subset(rest.numel(), num_fill, bins.device)]] = True
        return torch.nonzero(taken).flatten()

    def _set_stats(self, results: list[SampleResult], picked_bins: list[Tensor]) -> None:
        """Selected fg / bg counts and background per bin (and below the floor), one host sync."""
        counts = torch.bincount(torch.cat(picked_bins) + 1, minlength=self.num_bins + 1).tolist()
        num_fg = sum(r.indices.numel() for r in results) - sum(counts)
        self.last_stats = {"num_fg": float(num_fg), "num_bg": float(sum(counts))}
        self.last_stats.update({f"num_bg_bin{k}": float(n) for k, n in enumerate(counts[1:])})
        if self.floor_iou is not None:
            self.last_stats["num_bg_floor"] = float(counts[0])


def _random_subset(n: int, k: int, device: torch.device) -> Tensor:
    """Positions of min(k, n) of n items drawn uniformly without replacement (global torch RNG)."""
    return torch.randperm(n, device=device)[:k]
