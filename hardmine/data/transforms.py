"""Augmentation pipelines: torchvision `transforms.v2` over (image, target) pairs.

A pipeline takes a `tv_tensors.Image` (uint8, [3, H, W]) and a target dict whose box entries
(`BOX_KEYS`: "boxes", "ignore_boxes", and when present "proposals", "hard_negatives") are
`tv_tensors.BoundingBoxes`; every geometric step moves all of them together with the image and
passes plain tensors (labels, per-box weights, image id) through. Pipelines end with the
conversion to float in [0, 1], so the geometric steps run on the cheaper uint8 image. Randomness
comes from torch's global RNG; `DetectionDataset` seeds it per item, so pipelines need no seeding
of their own.

Training steps (`data.augment`), always applied in the order of `AUGMENT_STEPS`:

* `hflip`: `v2.RandomHorizontalFlip` with `data.hflip_prob`.
* `color_jitter`: `v2.ColorJitter` (brightness, contrast, saturation, hue) on the pixels only.
* `scale_jitter`: `RandomZoom`, a zoom that keeps the canvas (a plain rescale would be undone by
  the model's own resize to `model.min_size`).
* `iou_crop`: `IoUCrop`, SSD's random crop with a minimum IoU to some object.

With `scale_jitter` or `iou_crop`, `SanitizeTargets` follows: boxes are clipped to the image and
the degenerate ones dropped, "labels" and "weights" together with their "boxes". The default
(`hflip` only) is exactly `Compose([RandomHorizontalFlip(p), ToDtype(float32, scale=True)])`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from hardmine.config import AUGMENT_STEPS, DataConfig

#: Steps that can push boxes out of the image or shrink them: the pipeline then sanitizes the target.
CROPPING_STEPS = ("scale_jitter", "iou_crop")
#: Box-valued target entries; each is a `tv_tensors.BoundingBoxes` inside a pipeline.
BOX_KEYS = ("boxes", "ignore_boxes", "proposals", "hard_negatives")
#: Per-object entries aligned with "boxes": dropped together with their box.
PER_BOX_KEYS = ("labels", "weights")

Target = dict[str, Tensor]


@dataclass(frozen=True)
class AugmentOptions:
    """Which training steps run and their parameters (the flip probability is passed on its own).

    steps:          names from `AUGMENT_STEPS`; the order given does not matter.
    scale_jitter:   (lo, hi) range of `RandomZoom`'s factor.
    iou_crop_scale: (lo, hi) range of the crop's sides as fractions of the image's (SSD: 0.3, 1).
    color_jitter:   `v2.ColorJitter`'s brightness, contrast, saturation and hue strengths.
    min_box_size:   after a cropping step, boxes narrower or lower than this (pixels) are dropped.
    """

    steps: tuple[str, ...] = ("hflip",)
    scale_jitter: tuple[float, float] = (0.5, 1.5)
    iou_crop_scale: tuple[float, float] = (0.3, 1.0)
    color_jitter: tuple[float, float, float, float] = (0.125, 0.5, 0.5, 0.05)
    min_box_size: float = 1.0

    @classmethod
    def from_config(cls, data: DataConfig) -> AugmentOptions:
        """The options of `data.augment`, `data.scale_jitter`, `data.iou_crop_scale`, `data.color_jitter`."""
        b, c, s, h = data.color_jitter
        lo, hi = data.scale_jitter
        crop_lo, crop_hi = data.iou_crop_scale
        return cls(
            steps=tuple(data.augment),
            scale_jitter=(lo, hi),
            iou_crop_scale=(crop_lo, crop_hi),
            color_jitter=(b, c, s, h),
        )


def _split(inputs: tuple[Any, ...]) -> tuple[Tensor, Target]:
    """(image, target) from a transform's positional inputs (`v2.Compose` passes them unpacked)."""
    sample = inputs if len(inputs) > 1 else inputs[0]
    if not (isinstance(sample, tuple | list) and len(sample) == 2 and isinstance(sample[1], dict)):
        raise TypeError("hardmine's detection transforms take (image, target dict)")
    return sample[0], sample[1]


def _map_boxes(target: Target, fn: Any) -> Target:
    """`target` with `fn` applied to every `BoundingBoxes` entry; other entries are kept as they are."""
    return {k: fn(v) if isinstance(v, tv_tensors.BoundingBoxes) else v for k, v in target.items()}


def _uniform_int(lo: int, hi: int) -> int:
    """An integer uniform in [lo, hi] from torch's global RNG."""
    return int(torch.randint(lo, hi + 1, (1,)).item())


class RandomZoom(v2.Transform):
    """Scale jitter that keeps the canvas: zoom by s ~ U[lo, hi] at a random position.

    The image is resized by s, then cut back to its own size: for s > 1 a random window of the
    enlarged image (zoom in: objects larger, some cut at the border), for s < 1 the shrunk image at a
    random position on a black canvas (zoom out: objects smaller). Keeping the size is what makes
    this an augmentation here: the model resizes every image to `model.min_size`, which would undo
    a plain rescale (v2.ScaleJitter / v2.RandomShortestSize) up to interpolation. Boxes move with
    the image and are clipped to it (v2's crop); follow with `SanitizeTargets`.
    """

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"RandomZoom: scale range must satisfy 0 < lo <= hi, got {scale_range}")
        self.scale_range = (float(lo), float(hi))

    def forward(self, *inputs: Any) -> tuple[Tensor, Target]:
        image, target = _split(inputs)
        height, width = image.shape[-2:]
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * torch.rand(1).item()
        # at least 2 px a side (1 for a 1 px side): torch's antialiased uint8 resize fails on 1 x 1 outputs
        new_h, new_w = max(round(height * scale), min(height, 2)), max(round(width * scale), min(width, 2))
        # the window's corner in the resized image; negative = the image lies inside the window
        top = _uniform_int(min(0, new_h - height), max(0, new_h - height))
        left = _uniform_int(min(0, new_w - width), max(0, new_w - width))

        def zoom(x: Tensor) -> Tensor:
            return F.crop(F.resize(x, [new_h, new_w], antialias=True), top, left, height, width)

        return zoom(image), _map_boxes(target, zoom)


class IoUCrop(v2.RandomIoUCrop):
    """SSD's random IoU crop (torchvision's crop sampler) applied to a whole hardmine target.

    torchvision's `RandomIoUCrop` (0.29) samples the crop from the first `BoundingBoxes` of the
    sample, then zeroes the entries outside the crop in *every* `BoundingBoxes` with that one
    mask: an index error for the target's ignore boxes / proposals, or the wrong boxes dropped when
    their count happens to match. Here the crop is sampled from "boxes" alone (torchvision's
    `make_params`: a minimum IoU drawn from SSD's options, the crop's sides in `min_scale` ..
    `max_scale`, aspect ratio 0.5..2, at least one object centre inside), every box entry is
    cropped and clipped, and only the objects whose centre falls outside the crop are marked
    degenerate, for `SanitizeTargets` to drop with their labels and weights.

    An image without objects has no valid crop (torchvision's sampler would end at its "keep" option
    after many tries) and one with a side below 1 / `min_scale` pixels could get an empty crop
    (torchvision divides by zero): both are left as they are, without drawing.
    """

    def forward(self, *inputs: Any) -> tuple[Tensor, Target]:
        image, target = _split(inputs)
        if target["boxes"].shape[0] == 0 or min(image.shape[-2:]) * self.min_scale < 1:
            return image, target
        params = self.make_params([image, target["boxes"]])
        if not params:  # SSD's "keep the whole image" option
            return image, target
        crop = {k: params[k] for k in ("top", "left", "height", "width")}
        out = _map_boxes(target, lambda boxes: F.crop(boxes, **crop))
        out["boxes"][~params["is_within_crop_area"]] = 0
        return F.crop(image, **crop), out


class SanitizeTargets(v2.Transform):
    """Clip every box entry to the image and drop degenerate boxes, keeping per-box entries aligned.

    A box whose width or height is below `min_size` pixels after clipping is removed; for "boxes"
    its "labels" and "weights" go with it, the other entries (ignore boxes, proposals, mined hard
    negatives) are filtered on their own. Written here because torchvision's
    `SanitizeBoundingBoxes` (0.29) computes one validity mask from the first `BoundingBoxes` of a
    sample and applies it to all of them (those of another length pass through unfiltered), so it
    cannot sanitize a target with several box entries.
    """

    def __init__(self, min_size: float = 1.0) -> None:
        super().__init__()
        if min_size <= 0:
            raise ValueError(f"SanitizeTargets: min_size must be > 0, got {min_size}")
        self.min_size = min_size

    def forward(self, *inputs: Any) -> tuple[Tensor, Target]:
        image, target = _split(inputs)
        height, width = image.shape[-2:]
        out = dict(target)
        for key in BOX_KEYS:
            if key not in target:
                continue
            boxes = target[key]
            if not isinstance(boxes, tv_tensors.BoundingBoxes):
                raise TypeError(
                    f"target[{key!r}] must be tv_tensors.BoundingBoxes, got {type(boxes).__name__}"
                )
            xyxy = F.convert_bounding_box_format(
                boxes.as_subclass(Tensor),
                old_format=boxes.format,
                new_format=tv_tensors.BoundingBoxFormat.XYXY,
            ).clone()
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
            keep = ((xyxy[:, 2:] - xyxy[:, :2]) >= self.min_size).all(dim=1)
            out[key] = tv_tensors.BoundingBoxes(xyxy[keep], format="XYXY", canvas_size=(height, width))
            if key != "boxes":
                continue
            for per_box in PER_BOX_KEYS:
                if per_box in target:
                    if target[per_box].shape[0] != boxes.shape[0]:
                        raise ValueError(
                            f"target[{per_box!r}] has {target[per_box].shape[0]} entries for "
                            f"{boxes.shape[0]} boxes"
                        )
                    out[per_box] = target[per_box][keep]
        return image, out


def check_steps(steps: Sequence[str]) -> None:
    """ValueError naming the first unknown or repeated step of `steps`."""
    for i, step in enumerate(steps):
        if step not in AUGMENT_STEPS:
            raise ValueError(f"unknown augmentation step {step!r}; choose from {', '.join(AUGMENT_STEPS)}")
        if step in steps[:i]:
            raise ValueError(f"augmentation step {step!r} is listed twice")


def build_train_transforms(hflip_prob: float = 0.5, augment: AugmentOptions | None = None) -> v2.Transform:
    """Training pipeline: the steps of `augment` (default: the flip only) in `AUGMENT_STEPS` order,
    the target's sanitizing after a cropping step, then float [0, 1]."""
    options = augment if augment is not None else AugmentOptions()
    check_steps(options.steps)
    steps: list[Any] = []
    if "hflip" in options.steps:
        steps.append(v2.RandomHorizontalFlip(p=hflip_prob))
    if "color_jitter" in options.steps:
        brightness, contrast, saturation, hue = options.color_jitter
        steps.append(v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue))
    if "scale_jitter" in options.steps:
        steps.append(RandomZoom(options.scale_jitter))
    if "iou_crop" in options.steps:
        lo, hi = options.iou_crop_scale
        steps.append(IoUCrop(min_scale=lo, max_scale=hi))
    if any(step in options.steps for step in CROPPING_STEPS):
        steps.append(SanitizeTargets(options.min_box_size))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def build_eval_transforms() -> v2.Transform:
    """Evaluation pipeline: no augmentation, only the conversion to float [0, 1]."""
    return v2.ToDtype(torch.float32, scale=True)
