"""The box-regression losses of the heads, each declared once: a dataclass of its options that is
called with one signature.

    loss(deltas, gt_boxes, boxes, coder, state=None) -> [F] per-sample loss

deltas are the [F, 4] predicted (encoded) deltas of F foreground samples, gt_boxes their matched
ground-truth boxes and boxes the candidates (anchors, RoIs) they refine, both [F, 4] xyxy; coder is
the head's `BoxCoder`. Losses on encoded deltas encode the target themselves; GIoU decodes the
prediction. Summed over the 4 coordinates, no reduction; `reduce`, state and the table
(`hardmine.losses.REG_LOSSES`) work as for the classification losses
(`hardmine.losses.classification`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import generalized_box_iou_loss

from hardmine.losses.balanced_l1 import balanced_l1_loss
from hardmine.losses.ghm import GHMR
from hardmine.options import check_choices, opt, require


@dataclass
class RegLoss(ABC):
    """A box-regression loss: its options are its `opt` fields, checked in `__post_init__`."""

    #: The loss's name in configs (`roi_head.reg_loss=NAME`).
    name: ClassVar[str]

    def __post_init__(self) -> None:
        check_choices(self)

    def state(self) -> nn.Module | None:
        """A fresh module holding the loss's state (buffers), or None for a stateless loss."""
        return None

    @abstractmethod
    def __call__(
        self, deltas: Tensor, gt_boxes: Tensor, boxes: Tensor, coder: BoxCoder, state: nn.Module | None = None
    ) -> Tensor:
        """[F] loss of each foreground sample (see the module docstring)."""

    def reduce(self, weighted: Tensor, normaliser: Tensor | float, num_elements: int) -> Tensor:
        """The head's loss from its weighted per-sample losses: their sum divided by the head's
        `normaliser` (`num_elements`, 4 per sample, is for losses that normalise themselves)."""
        return weighted.sum() / normaliser


@dataclass
class SmoothL1(RegLoss):
    """Smooth L1 on encoded deltas (Fast R-CNN)."""

    beta: float = opt(1.0 / 9, "where the loss turns from quadratic to linear")

    name: ClassVar[str] = "smooth_l1"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta >= 0, "beta", "must be >= 0")

    def __call__(
        self, deltas: Tensor, gt_boxes: Tensor, boxes: Tensor, coder: BoxCoder, state: nn.Module | None = None
    ) -> Tensor:
        target = coder.encode_single(gt_boxes, boxes)
        return F.smooth_l1_loss(deltas, target, beta=self.beta, reduction="none").sum(dim=-1)


@dataclass
class L1(RegLoss):
    """L1 on encoded deltas (RetinaNet)."""

    name: ClassVar[str] = "l1"

    def __call__(
        self, deltas: Tensor, gt_boxes: Tensor, boxes: Tensor, coder: BoxCoder, state: nn.Module | None = None
    ) -> Tensor:
        return (deltas - coder.encode_single(gt_boxes, boxes)).abs().sum(dim=-1)


@dataclass
class BalancedL1(RegLoss):
    """Balanced L1 (Libra R-CNN, `hardmine.losses.balanced_l1`) on encoded deltas."""

    alpha: float = opt(0.5, "raises the gradient of inliers (Libra R-CNN: 0.5)")
    gamma: float = opt(1.5, "caps the gradient of outliers (Libra R-CNN: 1.5)")
    beta: float = opt(1.0, "inlier / outlier border (Libra Faster R-CNN: 1.0, Libra RetinaNet: 0.11)")

    name: ClassVar[str] = "balanced_l1"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("alpha", "gamma", "beta"):
            require(getattr(self, key) > 0, key, "must be > 0")

    def __call__(
        self, deltas: Tensor, gt_boxes: Tensor, boxes: Tensor, coder: BoxCoder, state: nn.Module | None = None
    ) -> Tensor:
        target = coder.encode_single(gt_boxes, boxes)
        return balanced_l1_loss(deltas, target, self.alpha, self.gamma, self.beta).sum(dim=-1)


@dataclass
class GIoU(RegLoss):
    """Generalized IoU loss between the decoded predictions and their ground truth."""

    name: ClassVar[str] = "giou"

    def __call__(
        self, deltas: Tensor, gt_boxes: Tensor, boxes: Tensor, coder: BoxCoder, state: nn.Module | None = None
    ) -> Tensor:
        return generalized_box_iou_loss(coder.decode_single(deltas, boxes), gt_boxes, reduction="none")


@dataclass
class GHMRLoss(RegLoss):
    """GHM-R (`hardmine.losses.ghm.GHMR`): "authentic smooth L1" re-weighted by the density of its
    gradient norm.

    Normalised by its own element count (4 coordinates per foreground sample, at least 1) and then
    multiplied by `loss_weight`, as in the authors' code, not by the head's normaliser. Its state is
    GHMR's moving average.
    """

    mu: float = opt(0.02, "mu of the authentic smooth L1 (official: 0.02)")
    bins: int = opt(10, "gradient-norm bins (official: 10)")
    momentum: float = opt(0.7, "EMA momentum of the bin counts; 0 = off (official: 0.7)")
    loss_weight: float = opt(10.0, "weight of the loss (official: 10, for its per-coordinate normaliser)")

    name: ClassVar[str] = "ghm"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.mu > 0, "mu", "must be > 0")
        require(self.bins >= 1, "bins", "must be >= 1")
        require(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        require(self.loss_weight >= 0, "loss_weight", "must be >= 0")

    def state(self) -> nn.Module:
        return GHMR(self.mu, self.bins, self.momentum, reduction="none")

    def __call__(
        self, deltas: Tensor, gt_boxes: Tensor, boxes: Tensor, coder: BoxCoder, state: nn.Module | None = None
    ) -> Tensor:
        if state is None:
            raise ValueError("GHM-R keeps a moving average: pass the module made by its state()")
        return state(deltas, coder.encode_single(gt_boxes, boxes)).sum(dim=-1)

    def reduce(self, weighted: Tensor, normaliser: Tensor | float, num_elements: int) -> Tensor:
        return weighted.sum() * self.loss_weight / max(num_elements, 1)
