"""Detection mixup (Zhang et al., "Bag of Freebies for Training Object Detection Neural Networks").

An item is blended with a partner image of the training set: on a canvas of max(h) x max(w), both
images sit at the top-left (zeros elsewhere) and pixel = lam * a + (1 - lam) * b with
lam ~ Beta(alpha, alpha). Geometry is kept (no resizing), so both images' boxes stay where they
were; the target holds both sets, each box with a loss weight ("weights"): lam for a's boxes,
1 - lam for b's. The heads multiply the foreground losses of the candidates matched to a box by its
weight (`hardmine.models.matching.sample_weights`).

`DetectionDataset` mixes the raw images and then augments the blend once, so a flip or crop moves
both images' boxes together and drops a box's weight with the box. Whether an item is mixed, its
partner and lam are drawn from torch's global RNG, which the dataset seeds per (seed, epoch, index):
an item is the same whatever the worker count or resume point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from hardmine.data.transforms import BOX_KEYS

if TYPE_CHECKING:
    from hardmine.config import DataConfig

Target = dict[str, Tensor]

#: The target entries `mix_targets` knows how to combine.
MIXED_KEYS = (*BOX_KEYS, "labels", "weights", "image_id")


@dataclass(frozen=True)
class MixupOptions:
    """prob: chance that an item is mixed (0 = off); alpha: lam ~ Beta(alpha, alpha);
    off_from_epoch: the first epoch without mixup (None = mixup in every epoch)."""

    prob: float = 0.0
    alpha: float = 1.5
    off_from_epoch: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"mixup prob must be in [0, 1], got {self.prob}")
        if not self.alpha > 0:
            raise ValueError(f"mixup alpha must be > 0, got {self.alpha}")
        if self.off_from_epoch is not None and self.off_from_epoch < 0:
            raise ValueError(f"mixup off_from_epoch must be >= 0 or None, got {self.off_from_epoch}")

    def active(self, epoch: int) -> bool:
        """Whether items of `epoch` may be mixed."""
        return self.prob > 0 and (self.off_from_epoch is None or epoch < self.off_from_epoch)

    @classmethod
    def from_config(cls, data: DataConfig, max_iter: int, iters_per_epoch: int) -> MixupOptions:
        """`data.mixup_*` for a run of `max_iter` iterations of `iters_per_epoch` each."""
        off = first_mixup_free_epoch(max_iter, iters_per_epoch, data.mixup_off_last_epochs)
        return cls(prob=data.mixup_prob, alpha=data.mixup_alpha, off_from_epoch=off)


def first_mixup_free_epoch(max_iter: int, iters_per_epoch: int, off_last_epochs: int) -> int | None:
    """The first of the last `off_last_epochs` epochs of a run (None when 0).

    Epoch e covers iterations [e * iters_per_epoch, (e + 1) * iters_per_epoch); a run of `max_iter`
    iterations has ceil(max_iter / iters_per_epoch) epochs, a partial last one included. When
    `off_last_epochs` covers them all, the result is 0: no mixup at all.
    """
    if max_iter <= 0 or iters_per_epoch <= 0:
        raise ValueError(f"need max_iter > 0 and iters_per_epoch > 0, got {max_iter}, {iters_per_epoch}")
    if off_last_epochs <= 0:
        return None
    num_epochs = -(-max_iter // iters_per_epoch)
    return max(num_epochs - off_last_epochs, 0)


@dataclass(frozen=True)
class MixupDraw:
    """The partner item's index and the blend ratio lam (the weight of the item's own image)."""

    partner: int
    lam: float


def draw_mixup(options: MixupOptions, index: int, num_items: int, epoch: int) -> MixupDraw | None:
    """Whether item `index` is mixed in `epoch`, and with which partner and ratio (None: not mixed).

    Draws from torch's global RNG (the caller seeds it per item): a uniform number against
    `options.prob`, then, for a mixed item, the partner (uniform over the other items) and
    lam ~ Beta(alpha, alpha). Draws nothing at all in an epoch without mixup, so the item's
    augmentation is then exactly that of a run without mixup. A one-item dataset is never mixed.
    """
    if not options.active(epoch):
        return None
    if torch.rand(1).item() >= options.prob or num_items < 2:
        return None
    partner = int(torch.randint(num_items - 1, (1,)).item())
    partner += int(partner >= index)  # skip the item itself
    alpha = torch.tensor(options.alpha, dtype=torch.float64)
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return MixupDraw(partner, lam)


def blend_images(a: Tensor, b: Tensor, lam: float) -> tv_tensors.Image:
    """uint8 [C, max h, max w]: lam * a + (1 - lam) * b, both at the top-left, zeros elsewhere.

    Computed in float32 and rounded to the nearest integer (at most half a grey level off the exact
    blend), so the augmentation steps after it run on uint8 as for an unmixed item.
    """
    if a.dtype != torch.uint8 or b.dtype != torch.uint8 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"mixup blends uint8 images with equal channel counts, got {a.dtype} {tuple(a.shape)} "
            f"and {b.dtype} {tuple(b.shape)}"
        )
    (ha, wa), (hb, wb) = a.shape[-2:], b.shape[-2:]
    canvas = torch.zeros((a.shape[0], max(ha, hb), max(wa, wb)), dtype=torch.float32)
    canvas[:, :ha, :wa] = lam * a.float()
    canvas[:, :hb, :wb] += (1.0 - lam) * b.float()
    return tv_tensors.Image(canvas.round_().clamp_(0, 255).to(torch.uint8))


def _xyxy(boxes: Tensor) -> Tensor:
    """Plain [N, 4] xyxy coordinates of a `BoundingBoxes` (or of plain xyxy boxes)."""
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        return F.convert_bounding_box_format(
            boxes.as_subclass(Tensor), old_format=boxes.format, new_format=tv_tensors.BoundingBoxFormat.XYXY
        )
    return boxes


def mix_targets(a: Target, b: Target, lam: float, canvas: tuple[int, int]) -> Target:
    """Both images' box entries concatenated (a's first) on the blended `canvas` (H, W).

    "weights" become lam x a's weights (1 when a has none) and (1 - lam) x b's; "labels" are
    concatenated, "image_id" is a's. Box entries become xyxy `BoundingBoxes` of `canvas`.
    """
    unknown = sorted((set(a) | set(b)) - set(MIXED_KEYS))
    if unknown:
        raise ValueError(f"mixup does not know how to combine the target entries {unknown}")
    out: Target = {}
    for key in BOX_KEYS:
        if (key in a) != (key in b):
            raise ValueError(f"mixup: target entry {key!r} is in only one of the two images")
        if key in a:
            boxes = torch.cat([_xyxy(a[key]), _xyxy(b[key])]).to(torch.float32)
            out[key] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas)
    out["labels"] = torch.cat([a["labels"], b["labels"]])
    weights = []
    for target, factor in ((a, lam), (b, 1.0 - lam)):
        own = target.get("weights")
        if own is None:
            own = torch.ones(target["boxes"].shape[0], dtype=torch.float32)
        weights.append(own.to(torch.float32) * factor)
    out["weights"] = torch.cat(weights)
    out["image_id"] = a["image_id"]
    return out


def mixup_pair(
    image_a: Tensor, target_a: Target, image_b: Tensor, target_b: Target, lam: float
) -> tuple[tv_tensors.Image, Target]:
    """The blend of two uint8 images and the combination of their targets (see the module's doc)."""
    image = blend_images(image_a, image_b, lam)
    canvas = (int(image.shape[-2]), int(image.shape[-1]))
    return image, mix_targets(target_a, target_b, lam, canvas)
