"""Random shapes (multi-scale training): one input size per batch, the same on every process.

With several `model.min_size` values each batch is resized to one of them, drawn anew every
`model.size_period` iterations (YOLO's "random shapes"; the Bag of Freebies paper's multi-scale
training). The draw is a pure function of (seed, iteration // period), not of any RNG state, so
every rank of a distributed run resizes its share of the global batch to the same size, and a
resumed run continues with the sizes the uninterrupted run would have used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from hardmine.models.transform import DetectionTransform

#: Separates this stream of draws from the other (seed, ...)-seeded ones (data order, augmentation).
_STREAM = 0x5A4E


@dataclass(frozen=True)
class RandomShapes:
    """Which shorter-side size of `sizes` iteration t trains at (see the module docstring)."""

    sizes: tuple[int, ...]
    period: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sizes or any(s <= 0 for s in self.sizes):
            raise ValueError(f"sizes must be positive, got {list(self.sizes)}")
        if self.period < 1:
            raise ValueError(f"period must be >= 1, got {self.period}")

    @property
    def active(self) -> bool:
        """Whether there is a choice to make (more than one size)."""
        return len(self.sizes) > 1

    def size_at(self, iteration: int) -> int:
        """The size of iteration `iteration`: uniform over `sizes`, fixed within each period."""
        if not self.active:
            return self.sizes[0]
        block = iteration // self.period
        state = np.random.SeedSequence([self.seed, _STREAM, block]).generate_state(1, np.uint64)[0]
        return self.sizes[int(state % np.uint64(len(self.sizes)))]

    def apply(self, model: nn.Module, iteration: int) -> int | None:
        """Set the training size of `model`'s transform for `iteration`; returns it (None if inactive)."""
        if not self.active:
            return None
        transform = getattr(getattr(model, "module", model), "transform", None)  # DDP wraps the model
        if not isinstance(transform, DetectionTransform):
            raise TypeError(f"random shapes need a DetectionTransform; {type(model).__name__} has none")
        transform.train_size = self.size_at(iteration)
        return transform.train_size
