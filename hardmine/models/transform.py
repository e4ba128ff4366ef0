"""Resize, normalise and batch images; torchvision's transform, extended to hardmine's targets.

torchvision's `GeneralizedRCNNTransform` rescales `boxes` only. hardmine targets also carry
`ignore_boxes` (VOC difficult / COCO crowd regions), for Fast R-CNN `proposals` and, when
training on a mined file, `hard_negatives`; they are rescaled with the same factors. Predictions
are mapped back to the original image size by `postprocess`, so everything outside the model
works in original pixel coordinates.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

#: Box-valued target keys rescaled together with `boxes`.
EXTRA_BOX_KEYS = ("ignore_boxes", "proposals", "hard_negatives")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scaled_max_size(max_size: int, size: int, reference: int) -> int:
    """The longer-side cap for shorter side `size`: `max_size` scaled by size / reference.

    `max_size` belongs to the reference (test) size; scaling it with the size keeps the cap from
    undoing larger sizes (multi-scale testing, random shapes) and leaves the reference unchanged.
    """
    return max(round(max_size * size / reference), 1)


class DetectionTransform(GeneralizedRCNNTransform):
    """`GeneralizedRCNNTransform` that also rescales the box entries of `EXTRA_BOX_KEYS`.

    Training size: with one `min_size` every image is resized to it (torchvision's behaviour).
    With several (random shapes / multi-scale training) the trainer sets `train_size` before each
    batch, one of `min_size` chosen by `hardmine.engine.shapes.RandomShapes` (the same on every
    process), and the whole batch is resized to it with the cap `scaled_max_size(max_size,
    train_size, min_size[-1])`. Without a `train_size` torchvision's per-image random choice applies.
    Inference uses `min_size[-1]` and `max_size`.
    """

    def __init__(
        self,
        min_size: int | tuple[int, ...],
        max_size: int,
        size_divisible: int = 32,
    ) -> None:
        sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        super().__init__(sizes, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible)
        #: shorter side of the current training batch (random shapes); None = torchvision's choice
        self.train_size: int | None = None

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.training and self.train_size is not None:
            sizes, cap = self.min_size, self.max_size
            self.min_size = (self.train_size,)
            self.max_size = scaled_max_size(cap, self.train_size, sizes[-1])
            try:
                return self._resize(image, target)
            finally:
                self.min_size, self.max_size = sizes, cap
        return self._resize(image, target)

    def _resize(
        self, image: Tensor, target: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        h, w = image.shape[-2:]
        image, target = super().resize(image, target)
        if target is not None:
            nh, nw = image.shape[-2:]
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
            for key in EXTRA_BOX_KEYS:
                if key in target:
                    boxes = target[key]
                    target[key] = boxes * scale.to(boxes.device, boxes.dtype)
        return image, target
