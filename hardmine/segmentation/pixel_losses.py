"""Per-pixel losses of semantic segmentation and the class weights of class-balanced cross-entropy.

Every loss takes logits [N, C + 1, H, W] (background is class 0) and a target [N, H, W] of labels
with `ignore_index` (255) where a pixel is neither background nor a class, and returns the loss of
each pixel, [N, H, W], 0 at ignored pixels: a pixel sampler (`pixel_sampling`) chooses which pixels
count and the reduction happens there.

Class-balanced cross-entropy is `pixel_cross_entropy` with `class_weight` from one of two formulas
over the training masks' pixel counts (`count_class_pixels`):

* `median_frequency_weights` (Eigen & Fergus, ICCV 2015; SegNet's choice): the frequency of class c
  is its pixel count divided by the pixel count of the images in which c appears, and
  w_c = median over classes of that frequency / frequency of c.
* `effective_number_weights` (Cui et al., "Class-Balanced Loss Based on Effective Number of
  Samples", CVPR 2019): w_c proportional to (1 - beta) / (1 - beta ** n_c), n_c the pixel count,
  scaled so the weights of the classes present sum to their number. The paper's beta (0.9999 on its
  image counts) saturates at about 1 / (1 - beta) = 10^4 samples; pixel counts run to millions, so
  beta must be much closer to 1 for the weights to differ.

Classes that never appear get weight 0 (they never occur as a target either).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardmine.data.masks import IGNORE_LABEL
from hardmine.losses.focal import softmax_focal_loss
from hardmine.options import check_choices, opt, require


def check_pixel_inputs(logits: Tensor, target: Tensor) -> None:
    """ValueError unless logits are [N, K, H, W] and the target [N, H, W] integer labels."""
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(
            f"need logits [N, C+1, H, W] and a target [N, H, W] of the same N, H, W; got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if target.dtype != torch.long:
        raise ValueError(f"target must hold int64 labels, got {target.dtype}")


def pixel_cross_entropy(
    logits: Tensor, target: Tensor, class_weight: Tensor | None = None, ignore_index: int = IGNORE_LABEL
) -> Tensor:
    """-w_y log p_y of each pixel, [N, H, W] (0 where ignored); `class_weight` [C + 1] gives w_y
    (None: 1), which makes it class-balanced cross-entropy."""
    check_pixel_inputs(logits, target)
    return F.cross_entropy(logits, target, weight=class_weight, ignore_index=ignore_index, reduction="none")


def pixel_focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | Tensor | None = None,
    ignore_index: int = IGNORE_LABEL,
) -> Tensor:
    """Softmax focal loss of each pixel, -alpha_y (1 - p_y) ** gamma log p_y, [N, H, W] (0 where
    ignored). gamma 2 as in Lin et al. With a softmax there is one term per pixel, that of the true
    class y, so alpha is a weight on the true class: None (default) weighs all classes alike, a
    float weighs foreground pixels (y >= 1) by alpha and background by 1 - alpha, a [C + 1] tensor
    weighs each class. RetinaNet's alpha = 0.25 balanced the many negative terms of its per-class
    sigmoids and does not carry over to the softmax form."""
    check_pixel_inputs(logits, target)
    return softmax_focal_loss(logits, target, alpha, gamma, "none", ignore_index)


@dataclass(frozen=True)
class ClassPixelCounts:
    """Per class (0 background, 1..C): `pixels`, its pixel count over the masks, and
    `image_pixels`, the count of labelled (not ignored) pixels of the masks in which it appears."""

    pixels: np.ndarray
    image_pixels: np.ndarray


def count_class_pixels(masks: Iterable[np.ndarray], num_classes: int) -> ClassPixelCounts:
    """Count the labels of semantic masks (uint8, 0..num_classes, 255 ignored)."""
    pixels = np.zeros(num_classes + 1, np.int64)
    image_pixels = np.zeros(num_classes + 1, np.int64)
    for mask in masks:
        labelled = mask[mask != IGNORE_LABEL]
        counts = np.bincount(labelled.ravel(), minlength=num_classes + 1)
        if len(counts) > num_classes + 1:
            raise ValueError(f"mask value {len(counts) - 1} is neither a label 0..{num_classes} nor 255")
        pixels += counts
        image_pixels[counts > 0] += labelled.size
    return ClassPixelCounts(pixels, image_pixels)


def median_frequency_weights(counts: ClassPixelCounts) -> Tensor:
    """w_c = median_c(f_c) / f_c with f_c = pixels_c / image_pixels_c (Eigen & Fergus); [C + 1] float32."""
    present = counts.pixels > 0
    weights = np.zeros(len(counts.pixels), np.float64)
    if present.any():
        frequency = counts.pixels[present] / counts.image_pixels[present]
        weights[present] = np.median(frequency) / frequency
    return torch.from_numpy(weights.astype(np.float32))


def effective_number_weights(counts: ClassPixelCounts, beta: float = 0.9999) -> Tensor:
    """w_c proportional to (1 - beta) / (1 - beta ** n_c), summing to the number of classes present
    (Cui et al.); [C + 1] float32."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    present = counts.pixels > 0
    weights = np.zeros(len(counts.pixels), np.float64)
    if present.any():
        n = counts.pixels[present].astype(np.float64)
        # 1 - beta ** n without cancellation: -expm1(n log beta)
        effective = -np.expm1(n * math.log(beta)) if beta > 0 else np.ones_like(n)
        raw = (1.0 - beta) / effective
        weights[present] = raw * present.sum() / raw.sum()
    return torch.from_numpy(weights.astype(np.float32))


# --- the losses of the config, each declared once: `seg_head.loss=NAME`, options as `opt` fields ---


@dataclass
class PixelLoss(ABC):
    """A per-pixel loss of the config: called as `loss(logits, target, class_weight)` -> [N, H, W]
    (0 at ignored pixels). `weighted` losses take class weights made from the training masks'
    pixel counts by `class_weights`; the others ignore `class_weight`."""

    name: ClassVar[str]
    weighted: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_choices(self)

    def class_weights(self, counts: ClassPixelCounts) -> Tensor:
        """[C + 1] class weights from the training masks' pixel counts (weighted losses only)."""
        raise NotImplementedError(f"pixel loss {self.name!r} takes no class weights")

    @abstractmethod
    def __call__(self, logits: Tensor, target: Tensor, class_weight: Tensor | None = None) -> Tensor: ...


@dataclass
class PixelCrossEntropy(PixelLoss):
    """Cross-entropy of every pixel (FCN, DeepLab)."""

    name: ClassVar[str] = "ce"

    def __call__(self, logits: Tensor, target: Tensor, class_weight: Tensor | None = None) -> Tensor:
        return pixel_cross_entropy(logits, target)


@dataclass
class PixelFocal(PixelLoss):
    """Softmax focal loss of every pixel, -alpha_y (1 - p_y) ** gamma log p_y (Lin et al.)."""

    name: ClassVar[str] = "focal"
    gamma: float = opt(2.0, "focusing parameter (paper: 2)")
    alpha: float | None = opt(
        None,
        "weight of foreground pixels (background: 1 - alpha); null = all alike (RetinaNet's 0.25 "
        "balanced its sigmoids' negative terms and has no softmax counterpart)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.gamma >= 0, "gamma", f"must be >= 0, got {self.gamma}")
        require(
            self.alpha is None or 0.0 <= self.alpha <= 1.0,
            "alpha",
            f"must be in [0, 1] or null, got {self.alpha}",
        )

    def __call__(self, logits: Tensor, target: Tensor, class_weight: Tensor | None = None) -> Tensor:
        return pixel_focal_loss(logits, target, self.gamma, self.alpha)


#: `ClassBalancedCrossEntropy.weights` formulas.
CLASS_WEIGHTINGS = ("median_frequency", "effective_number")


@dataclass
class ClassBalancedCrossEntropy(PixelLoss):
    """Class-balanced cross-entropy: each pixel's loss weighted by its class's weight from the
    training masks (median frequency balancing or the effective number of samples)."""

    name: ClassVar[str] = "class_balanced"
    weighted: ClassVar[bool] = True
    weights: str = opt(
        "median_frequency",
        "median_frequency (Eigen & Fergus; SegNet) or effective_number (Cui et al.)",
        CLASS_WEIGHTINGS,
    )
    beta: float = opt(
        0.9999,
        "effective_number: beta (paper: 0.9999 for image counts; saturates near 1 / (1 - beta) "
        "pixels, so pixel counts need a beta much closer to 1)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.beta < 1.0, "beta", f"must be in [0, 1), got {self.beta}")

    def class_weights(self, counts: ClassPixelCounts) -> Tensor:
        if self.weights == "median_frequency":
            return median_frequency_weights(counts)
        return effective_number_weights(counts, self.beta)

    def __call__(self, logits: Tensor, target: Tensor, class_weight: Tensor | None = None) -> Tensor:
        if class_weight is not None:
            class_weight = class_weight.to(logits.dtype)
        return pixel_cross_entropy(logits, target, class_weight=class_weight)


#: Config name -> pixel loss class.
PIXEL_LOSSES: dict[str, type[PixelLoss]] = {
    cls.name: cls for cls in (PixelCrossEntropy, PixelFocal, ClassBalancedCrossEntropy)
}
