"""Augmentation pipelines: torchvision `transforms.v2` over (image, target) pairs.

A pipeline takes a `tv_tensors.Image` (uint8, [3, H, W]) and a target dict whose `boxes` and
`ignore_boxes` are `tv_tensors.BoundingBoxes`; v2 moves every box entry together with the image,
and passes plain tensors (labels, image id) through. Pipelines end with the conversion to float
in [0, 1], so geometric steps run on the cheaper uint8 image. Randomness comes from torch's global
RNG; `DetectionDataset` seeds it per item, so pipelines need no seeding of their own.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def build_train_transforms(hflip_prob: float = 0.5) -> v2.Transform:
    """Training pipeline: random horizontal flip with probability `hflip_prob`, then float [0, 1]."""
    return v2.Compose([v2.RandomHorizontalFlip(p=hflip_prob), v2.ToDtype(torch.float32, scale=True)])


def build_eval_transforms() -> v2.Transform:
    """Evaluation pipeline: no augmentation, only the conversion to float [0, 1]."""
    return v2.ToDtype(torch.float32, scale=True)
