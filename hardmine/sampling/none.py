"""No sampling: every candidate with a foreground or background label trains the head.

The default for dense one-stage heads (RetinaNet trains on all anchors with focal loss) and for
sampling-free training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from hardmine.sampling.base import Candidates, Sampler, SampleResult, ScoreFn, take


@dataclass
class NoSampler(Sampler):
    """Keep all assigned candidates (labels >= 0), in their original order. No options."""

    name: ClassVar[str] = "none"

    def select(
        self, labels: list[Tensor], candidates: Candidates, score_fn: ScoreFn | None
    ) -> list[SampleResult]:
        return [take(image_labels, torch.nonzero(image_labels >= 0).flatten()) for image_labels in labels]
