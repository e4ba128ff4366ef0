"""Pixel hard example mining: which pixels of a batch count in the loss, and the diagnostics.

A pixel sampler sees the logits, the target and each pixel's loss (all without autograd) and
returns a keep mask [N, H, W]; `SampledPixelLoss` reduces the loss over the kept pixels. The
detection `Sampler` protocol (`hardmine.sampling.base`) does not fit: it labels candidates by IoU
with boxes and returns indices per image, while a pixel's label is given and the selection is a
mask over the batch. Two forms of pixel OHEM:

* `OhemThreshold` (mmsegmentation's `OHEMPixelSampler`; GluonCV's `SoftmaxCrossEntropyOHEMLoss` is
  the same rule): the pixels whose softmax probability of the true class is below `thresh` (0.7),
  and at least `min_kept` (100000) per image of the batch: when fewer are below the threshold, the
  threshold rises to the (min_kept x N)-th smallest probability. mmsegmentation's values are for
  its 512x1024 Cityscapes crops (100000 is 19 % of a crop); scale `min_kept` with the crop area.
* `OhemTopK` (DeepLab's `top_k_percent_pixels`, detectron2's `DeepLabCE`; 0.2 in detectron2's
  DeepLab head with its `hard_pixel_mining` loss): the `fraction` of pixels with the highest loss.
  TensorFlow DeepLab's flag defaults to 1.0 (no mining) and can ramp the fraction down over
  `hard_example_mining_step` steps; that ramp is not here.

Both rank over the whole batch as their sources do, and break ties by pixel position (the first
pixels in [N, H, W] order first), so they keep exactly the stated number of pixels: `OhemThreshold`
keeps max(below thresh, min(min_kept x N, valid)), `OhemTopK` floor(fraction x valid), at least one.
Where the sources differ: mmsegmentation keeps the pixels strictly below the (min_kept x N + 1)-th
smallest probability (ties at that value may keep fewer; with fewer valid pixels than that it drops
the most confident one); the PyTorch ports of GluonCV keep those at or below the min_kept-th (ties
may keep more); DeepLab's fraction counts ignored pixels too (here only valid ones).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from hardmine.data.masks import IGNORE_LABEL
from hardmine.options import opt, require
from hardmine.segmentation.pixel_losses import check_pixel_inputs


def true_class_probability(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_LABEL) -> Tensor:
    """Softmax probability of each pixel's target class, [N, H, W]; 1 at ignored pixels."""
    valid = target != ignore_index
    labels = torch.where(valid, target, 0)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    # exp(logit_y - logsumexp): no [N, C+1, H, W] softmax is materialised
    prob = (logits.gather(1, labels[:, None]).squeeze(1) - logits.logsumexp(dim=1)).exp()
    return torch.where(valid, prob, 1.0)


def lowest(values: Tensor, k: int) -> Tensor:
    """Bool mask of the `k` smallest `values`; ties go to the earlier positions (flattened order)."""
    flat = values.reshape(-1)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k >= flat.numel():
        return torch.ones_like(values, dtype=torch.bool)
    kth = flat.kthvalue(k).values
    below = flat < kth
    ties = flat == kth
    keep = below | (ties & (ties.cumsum(0) <= k - below.sum()))
    return keep.view_as(values)


@torch.no_grad()
def ohem_threshold(
    logits: Tensor,
    target: Tensor,
    thresh: float = 0.7,
    min_kept: int = 100_000,
    ignore_index: int = IGNORE_LABEL,
) -> Tensor:
    """Keep mask [N, H, W]: valid pixels whose true-class probability is below `thresh`; when fewer
    than min_kept x N, the min_kept x N least confident valid pixels (all, if there are fewer)."""
    check_pixel_inputs(logits, target)
    return _keep_below(
        true_class_probability(logits, target, ignore_index), target != ignore_index, thresh, min_kept
    )


def _keep_below(prob: Tensor, valid: Tensor, thresh: float, min_kept: int) -> Tensor:
    keep = valid & (prob < thresh)
    wanted = min(min_kept * prob.shape[0], int(valid.sum()))
    if int(keep.sum()) >= wanted:
        return keep
    return lowest(torch.where(valid, prob, math.inf), wanted) & valid


@torch.no_grad()
def ohem_topk(
    loss: Tensor, target: Tensor, fraction: float = 0.2, ignore_index: int = IGNORE_LABEL
) -> Tensor:
    """Keep mask [N, H, W] of the floor(fraction x valid pixels) valid pixels (at least one) with the
    highest `loss` [N, H, W]."""
    valid = target != ignore_index
    num_valid = int(valid.sum())
    wanted = max(1, math.floor(round(fraction * num_valid, 6))) if num_valid else 0
    loss = loss.to(torch.promote_types(loss.dtype, torch.float32))
    return lowest(torch.where(valid, -loss, math.inf), wanted) & valid


class PixelSampler(ABC):
    """Chooses the pixels that count: `__call__(logits, target, loss)` -> keep mask [N, H, W] of
    valid pixels, everything computed without autograd. `last_stats` holds the sampler's own
    diagnostics of the latest call. Its options are its `opt` fields (the config's
    `seg_head.sampler`), checked in `__post_init__`; `name` is its config name."""

    name: ClassVar[str]
    ignore_index: int = IGNORE_LABEL

    def __post_init__(self) -> None:
        self.last_stats: dict[str, float] = {}

    @abstractmethod
    def __call__(self, logits: Tensor, target: Tensor, loss: Tensor) -> Tensor: ...


@dataclass
class AllPixels(PixelSampler):
    """No mining: every pixel that is not ignored."""

    name: ClassVar[str] = "none"
    ignore_index: int = field(default=IGNORE_LABEL, compare=False)

    def __call__(self, logits: Tensor, target: Tensor, loss: Tensor) -> Tensor:
        return target != self.ignore_index


#: mmsegmentation's crop (512 x 1024 pixels), the image area its min_kept = 100000 belongs to.
MMSEG_CROP_AREA = 512 * 1024


@dataclass
class OhemThreshold(PixelSampler):
    """OHEM by confidence (mmsegmentation's OHEMPixelSampler): pixels whose true-class probability
    is below `thresh`, at least `min_kept` per image of the batch (`ohem_threshold`), scaled with
    the image area (`min_kept_area`)."""

    name: ClassVar[str] = "ohem"
    thresh: float = opt(0.7, "keep the pixels whose softmax probability of the true class is below this")
    min_kept: int = opt(
        100_000,
        "at least this many pixels per image of min_kept_area pixels, the least confident ones "
        "(mmsegmentation: 100000 on its 512x1024 crops)",
    )
    min_kept_area: int = opt(
        MMSEG_CROP_AREA,
        "the image area (pixels) min_kept is given for: an image of A pixels keeps at least "
        "round(min_kept x A / min_kept_area), so mmsegmentation's 19 % of a crop carries over to "
        "other sizes; 0 = min_kept pixels whatever the size",
    )
    ignore_index: int = field(default=IGNORE_LABEL, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 < self.thresh <= 1.0, "thresh", f"must be in (0, 1], got {self.thresh}")
        require(self.min_kept >= 0, "min_kept", f"must be >= 0, got {self.min_kept}")
        require(
            self.min_kept_area >= 0,
            "min_kept_area",
            f"must be >= 0 (0 = no scaling), got {self.min_kept_area}",
        )

    def kept_minimum(self, height: int, width: int) -> int:
        """The least number of pixels kept per image of `height` x `width` pixels."""
        if not self.min_kept_area:
            return self.min_kept
        return round(self.min_kept * height * width / self.min_kept_area)

    @torch.no_grad()
    def __call__(self, logits: Tensor, target: Tensor, loss: Tensor) -> Tensor:
        check_pixel_inputs(logits, target)
        prob = true_class_probability(logits, target, self.ignore_index)
        valid = target != self.ignore_index
        min_kept = self.kept_minimum(*target.shape[-2:])
        keep = _keep_below(prob, valid, self.thresh, min_kept)
        self.last_stats = {
            "num_below_thresh": float((valid & (prob < self.thresh)).sum()),
            "max_kept_prob": float(prob[keep].max()) if keep.any() else 0.0,
            "min_kept": float(min_kept * target.shape[0]),
        }
        return keep


@dataclass
class OhemTopK(PixelSampler):
    """OHEM by loss rank (DeepLab's top_k_percent_pixels): the `fraction` of valid pixels with the
    highest loss (`ohem_topk`)."""

    name: ClassVar[str] = "topk"
    fraction: float = opt(
        0.2, "keep this fraction of the valid pixels, those of highest loss (detectron2's DeepLab: 0.2)"
    )
    ignore_index: int = field(default=IGNORE_LABEL, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 < self.fraction <= 1.0, "fraction", f"must be in (0, 1], got {self.fraction}")

    def __call__(self, logits: Tensor, target: Tensor, loss: Tensor) -> Tensor:
        keep = ohem_topk(loss, target, self.fraction, self.ignore_index)
        self.last_stats = {"min_kept_loss": float(loss[keep].min()) if keep.any() else 0.0}
        return keep


#: Config name -> pixel sampler class.
PIXEL_SAMPLERS: dict[str, type[PixelSampler]] = {
    "none": AllPixels,
    "ohem": OhemThreshold,
    "topk": OhemTopK,
}


def pixel_stats(
    loss: Tensor, keep: Tensor, target: Tensor, ignore_index: int = IGNORE_LABEL
) -> dict[str, float]:
    """Diagnostics of one selection: valid and kept pixel counts, the kept share of valid pixels,
    the foreground (label >= 1) share of the kept loss, and the mean loss of kept and valid pixels."""
    valid = target != ignore_index
    loss = loss.detach().float()
    num_valid, num_kept = int(valid.sum()), int(keep.sum())
    kept_loss = float(loss[keep].sum())
    fg_loss = float(loss[keep & (target >= 1) & valid].sum())
    return {
        "num_valid": float(num_valid),
        "num_kept": float(num_kept),
        "kept_fraction": num_kept / num_valid if num_valid else 0.0,
        "fg_loss_share": fg_loss / kept_loss if kept_loss > 0 else 0.0,
        "mean_loss_kept": kept_loss / num_kept if num_kept else 0.0,
        "mean_loss_valid": float(loss[valid].sum()) / num_valid if num_valid else 0.0,
    }


PixelLossFn = Callable[[Tensor, Tensor], Tensor]

#: How `SampledPixelLoss` reduces the kept pixels' losses.
REDUCTIONS = ("none", "mean", "sum")


class SampledPixelLoss(nn.Module):
    """A per-pixel loss (`pixel_losses`, e.g. `functools.partial(pixel_focal_loss, gamma=2)`)
    reduced over the pixels a `PixelSampler` keeps; `last_stats` holds `pixel_stats` and the
    sampler's own diagnostics (as `sampler/KEY`) of the latest call.

    "mean" divides by the number of kept pixels (a batch where all pixels are ignored gives 0);
    `avg_factor` replaces that denominator, e.g. the number of all pixels, which is what
    mmsegmentation divides by (its `avg_non_ignore=False` default) and scales the loss by the kept
    share. With class weights the denominator stays a pixel count (torch's weighted "mean" divides
    by the sum of the weights instead).
    """

    def __init__(
        self,
        loss: PixelLossFn,
        sampler: PixelSampler | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.loss = loss
        self.sampler = sampler if sampler is not None else AllPixels()
        self.reduction = reduction
        self.last_stats: dict[str, float] = {}

    def forward(self, logits: Tensor, target: Tensor, avg_factor: float | Tensor | None = None) -> Tensor:
        check_pixel_inputs(logits, target)
        loss = self.loss(logits, target)
        keep = self.sampler(logits.detach(), target, loss.detach())
        self.last_stats = pixel_stats(loss, keep, target, self.sampler.ignore_index)
        self.last_stats.update({f"sampler/{k}": v for k, v in self.sampler.last_stats.items()})
        kept = torch.where(keep, loss, 0.0)
        if self.reduction == "none":
            if avg_factor is not None:
                raise ValueError("avg_factor needs reduction 'mean', got 'none'")
            return kept
        if self.reduction == "sum":
            if avg_factor is not None:
                raise ValueError("avg_factor needs reduction 'mean', got 'sum'")
            return kept.sum()
        if avg_factor is None:
            avg_factor = keep.sum().clamp_min(1)
        return kept.sum() / avg_factor
