"""The torch `Dataset` of segmentation training and evaluation: a `DetectionDataset` whose targets
also hold the image's semantic mask, moved with the image by the augmentation."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from hardmine.data.dataset import DetectionDataset, Target
from hardmine.data.masks import load_mask


class SegmentationDataset(DetectionDataset):
    """`DetectionDataset` items with target "mask": uint8 [H, W] (0 background, 1..C, 255 ignore)
    at the image's size, a `tv_tensors.Mask` inside the pipeline, so flips move it with the image
    (the config allows only steps that do: `SEGMENTATION_AUGMENT_STEPS`). The index must be read
    with masks (`load_dataset(..., masks=True)`); `load_mask` names the file and record of a bad one."""

    def load(self, i: int) -> tuple[tv_tensors.Image, Target]:
        image, target = super().load(i)
        mask = load_mask(self.index.records[i], self.index)
        target["mask"] = tv_tensors.Mask(torch.tensor(mask))
        return image, target
