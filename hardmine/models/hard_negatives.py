"""Mined hard negatives (offline bootstrapping) inside the heads' training step.

Training targets may carry "hard_negatives": [H, 4] boxes (resized-image coordinates, like
"boxes") that an earlier model detected with a high score where there is no object (see
`hardmine.engine.mining`, which writes them, and docs/test-time-and-mining.md).

* Two-stage detectors: `append_hard_negatives` adds them to the RoI head's candidates, as the
  ground-truth boxes are added to the proposals, so every mined region is a candidate in every
  iteration. Matched like any candidate, they are background by IoU (they were mined below the
  mining IoU threshold to every object), so the sampler can pick them.
* One-stage detectors: `HardNegativeUpweight` multiplies the loss weight of every sampled
  background anchor that overlaps a mined region at IoU >= `iou` by `weight`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from hardmine.sampling.base import SampleResult

#: Target key of the mined regions.
KEY = "hard_negatives"


def append_hard_negatives(proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> list[Tensor]:
    """Each image's candidates with its mined regions (if its target has any) appended at the end."""
    return [
        torch.cat([p, t[KEY].to(p.dtype)]) if KEY in t and t[KEY].numel() else p
        for p, t in zip(proposals, targets)
    ]


@dataclass(frozen=True)
class HardNegativeUpweight:
    """Loss-weight factor of sampled background anchors near a mined region (one-stage heads).

    iou:    a background anchor overlapping some mined region at IoU >= this is up-weighted.
    weight: the factor (1 = no effect).
    """

    iou: float = 0.5
    weight: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.iou <= 1.0:
            raise ValueError(f"iou must be in (0, 1], got {self.iou}")
        if self.weight <= 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")

    def factors(
        self, results: list[SampleResult], anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> Tensor:
        """Per sampled anchor (the images' samples concatenated, in `results` order): `weight`
        for a background anchor overlapping a mined region of its image at IoU >= `iou`, else 1."""
        out = []
        for r, image_anchors, t in zip(results, anchors, targets):
            factor = torch.ones(r.indices.numel(), device=r.indices.device)
            mined = t.get(KEY)
            if mined is not None and mined.numel():
                bg = torch.nonzero(r.labels == 0).flatten()
                if bg.numel():
                    best = box_iou(image_anchors[r.indices[bg]].float(), mined.float()).max(dim=1).values
                    factor[bg[best >= self.iou]] = self.weight
            out.append(factor)
        return torch.cat(out)
