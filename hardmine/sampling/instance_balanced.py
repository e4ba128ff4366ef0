"""Instance-balanced positive sampling (Pang et al., "Libra R-CNN: Towards Balanced Learning for
Object Detection", CVPR 2019; mmdetection's `InstanceBalancedPosSampler`).

Drawn at random, foreground candidates come in proportion to how many each object has, so a large
or well-covered object fills most of the foreground budget and a small one, with a handful of
overlapping RoIs, is rarely trained. Libra R-CNN draws the foreground evenly across the
ground-truth objects instead. `InstanceBalancedSampler.select`, per image:

1. the foreground budget is int(fg_fraction * B), as `random`'s; an image with no more foreground
   candidates than that keeps them all;
2. otherwise the budget is split evenly over the objects that have foreground candidates: each
   gets the same share, and an object with fewer candidates than its share keeps them all and
   leaves the rest to the others (water-filling); the shares differ by at most one, the extra
   ones going to objects chosen at random;
3. each object's share is drawn uniformly at random from its foreground candidates;
4. the background fills the rest of B at random, as `random` does.

The defaults are Libra R-CNN's Faster R-CNN budget (B = 512, 25 % foreground). mmdetection gives
each object round(budget / objects) + 1 candidates and then trims or fills at random, which makes
the shares only roughly even; the water-filling here makes them exactly even. Libra R-CNN pairs
this sampler with IoU-balanced negatives (`iou_balanced`); here the background is drawn at random,
so that a comparison with `random` differs in the foreground only. Candidates need their
ground-truth index (`Candidates.gt_index`, set by every head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from hardmine.options import opt, require
from hardmine.sampling.base import Candidates, Sampler, SampleResult, ScoreFn, take


@dataclass
class InstanceBalancedSampler(Sampler):
    """Foreground drawn evenly across the ground-truth objects, background at random (see the module).

    Draws use the global torch RNG, so a seeded run selects the same candidates. `last_stats` after
    each call, summed over the batch: num_fg, num_bg, num_objects (objects with foreground
    candidates) and max_fg_per_object (the most foreground selected for one object).
    """

    batch_size_per_image: int = opt(512, "B: candidates sampled per image")
    fg_fraction: float = opt(0.25, "largest fraction of B that is foreground, split evenly over the objects")

    name: ClassVar[str] = "instance_balanced"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.batch_size_per_image > 0, "batch_size_per_image", "must be > 0")
        require(0.0 <= self.fg_fraction <= 1.0, "fg_fraction", "must be in [0, 1]")

    def select(
        self, labels: list[Tensor], candidates: Candidates, score_fn: ScoreFn | None
    ) -> list[SampleResult]:
        """Instance-balanced foreground plus random background per image; sets `last_stats`."""
        if candidates.gt_index is None:
            raise ValueError("InstanceBalancedSampler needs Candidates.gt_index (each candidate's object)")
        results, num_objects, max_per_object = [], 0, 0
        for image_labels, gt_index in zip(labels, candidates.gt_index):
            fg = torch.nonzero(image_labels > 0).flatten()
            bg = torch.nonzero(image_labels == 0).flatten()
            fg, per_object = self._balanced_foreground(fg, gt_index[fg])
            num_bg = min(bg.numel(), self.batch_size_per_image - fg.numel())
            bg = bg[torch.randperm(bg.numel(), device=bg.device)[:num_bg]]
            results.append(take(image_labels, torch.cat([fg, bg])))
            num_objects += len(per_object)
            max_per_object = max([max_per_object, *per_object])
        num_fg = sum(r.num_fg for r in results)
        self.last_stats = {
            "num_fg": float(num_fg),
            "num_bg": float(sum(r.indices.numel() for r in results) - num_fg),
            "num_objects": float(num_objects),
            "max_fg_per_object": float(max_per_object),
        }
        return results

    def _balanced_foreground(self, fg: Tensor, objects: Tensor) -> tuple[Tensor, list[int]]:
        """One image's selected foreground (positions into the image's candidates) and how many
        each object got; `objects` is the object of each of the `fg` candidates."""
        budget = int(self.batch_size_per_image * self.fg_fraction)
        ids, counts = torch.unique(objects, return_counts=True)
        if fg.numel() <= budget:
            return fg, counts.tolist()
        shares = water_fill(counts.tolist(), budget, torch.randperm(len(ids)).tolist())
        picked = []
        for object_id, share in zip(ids, shares):
            members = fg[objects == object_id]
            picked.append(members[torch.randperm(members.numel(), device=fg.device)[:share]])
        return torch.cat(picked), shares


def water_fill(counts: list[int], budget: int, tie_order: list[int]) -> list[int]:
    """Shares of `budget` (< sum(counts)) over objects with `counts` candidates: as even as the
    counts allow, none above its count. Objects are served from the fewest candidates up, each
    taking an even split of what is left (rounded down), so the last served take the remainder;
    among objects with equal counts, `tie_order` (a permutation) decides who is served last."""
    order = sorted(range(len(counts)), key=lambda i: (counts[i], tie_order[i]))
    shares = [0] * len(counts)
    left = budget
    for served, i in enumerate(order):
        shares[i] = min(counts[i], left // (len(order) - served))
        left -= shares[i]
    return shares
