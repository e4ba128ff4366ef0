"""Biased random sampling (Fast R-CNN): B candidates per image, a fixed fraction of them foreground."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from hardmine.options import opt, require
from hardmine.sampling.base import Candidates, Sampler, SampleResult, ScoreFn, take


@dataclass
class RandomSampler(Sampler):
    """Draw up to `fg_fraction * batch_size_per_image` foreground candidates at random, then fill
    the rest of the `batch_size_per_image` slots with random background candidates.

    When an image has too few foreground candidates the free slots go to background, as in
    Fast R-CNN and torchvision; when it has too few of both, fewer than B are returned.
    """

    batch_size_per_image: int = opt(512, "B: candidates sampled per image")
    fg_fraction: float = opt(0.25, "largest fraction of B that is foreground (the rest: background)")

    name: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.batch_size_per_image > 0, "batch_size_per_image", "must be > 0")
        require(0.0 <= self.fg_fraction <= 1.0, "fg_fraction", "must be in [0, 1]")

    def select(
        self, labels: list[Tensor], candidates: Candidates, score_fn: ScoreFn | None
    ) -> list[SampleResult]:
        results = []
        for image_labels in labels:
            fg = torch.nonzero(image_labels > 0).flatten()
            bg = torch.nonzero(image_labels == 0).flatten()
            num_fg = min(fg.numel(), int(self.batch_size_per_image * self.fg_fraction))
            num_bg = min(bg.numel(), self.batch_size_per_image - num_fg)
            fg = fg[torch.randperm(fg.numel(), device=fg.device)[:num_fg]]
            bg = bg[torch.randperm(bg.numel(), device=bg.device)[:num_bg]]
            results.append(take(image_labels, torch.cat([fg, bg])))
        return results
