"""The classification losses of the heads, each declared once: a dataclass of its options that is
called with one signature.

    loss(logits, labels, state=None) -> [K] per-sample loss

logits are [K, C + 1] for a softmax loss (column 0 the background; the RoI head) and [K, C] for a
sigmoid one (one-vs-all, background = all zeros; the RPN with C = 1 and the dense head); labels are
[K] long, 0 background and 1..C the object classes. A sigmoid loss builds its one-hot targets from
the labels (smoothed with `label_smoothing`) and sums its elementwise loss over the classes.

No reduction: heads weight, rank (OHEM) and normalise the samples themselves, through `reduce`,
which a loss with its own normalisation (GHM-C) overrides. A loss with state (GHM-C's moving
average of its bin counts) makes it in `state()`; the head registers that module, so the state goes
into checkpoints, and passes it back on every call. `hardmine.losses.CLS_LOSSES` is the table of
them by config name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmine.losses.focal import sigmoid_focal_loss, softmax_focal_loss
from hardmine.losses.ghm import GHMC
from hardmine.losses.smoothing import smooth_binary_targets
from hardmine.options import check_choices, opt, require

#: `ClsLoss.activation` values: which head outputs a loss takes.
SOFTMAX, SIGMOID = "softmax", "sigmoid"


@dataclass
class ClsLoss(ABC):
    """A classification loss: its options are its `opt` fields, checked in `__post_init__`."""

    #: The loss's name in configs (`roi_head.cls_loss=NAME`).
    name: ClassVar[str]
    #: SOFTMAX (logits over background + C classes) or SIGMOID (C one-vs-all logits).
    activation: ClassVar[str]

    def __post_init__(self) -> None:
        check_choices(self)

    def state(self) -> nn.Module | None:
        """A fresh module holding the loss's state (buffers), or None for a stateless loss."""
        return None

    @abstractmethod
    def __call__(self, logits: Tensor, labels: Tensor, state: nn.Module | None = None) -> Tensor:
        """[K] loss of each sample (see the module docstring)."""

    def reduce(self, weighted: Tensor, normaliser: Tensor | float, num_elements: int) -> Tensor:
        """The head's loss from its weighted per-sample losses: their sum divided by the head's
        `normaliser` (`num_elements`, the samples times the logits per sample, is for losses that
        normalise themselves)."""
        return weighted.sum() / normaliser


@dataclass
class CrossEntropy(ClsLoss):
    """Softmax cross-entropy over C + 1 classes, optionally against smoothed targets."""

    label_smoothing: float = opt(
        0.0, "train against (1 - eps) one-hot + eps / (C + 1) (Bag of Freebies); 0 = off, 0.1 typical"
    )

    name: ClassVar[str] = "ce"
    activation: ClassVar[str] = SOFTMAX

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1) (0 = off)")

    def __call__(self, logits: Tensor, labels: Tensor, state: nn.Module | None = None) -> Tensor:
        return F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)


@dataclass
class SoftmaxFocal(ClsLoss):
    """Softmax focal loss over C + 1 classes without alpha: -(1 - p_y) ** gamma log p_y."""

    gamma: float = opt(2.0, "focusing parameter: (1 - p_y) ** gamma down-weights easy samples")

    name: ClassVar[str] = "softmax_focal"
    activation: ClassVar[str] = SOFTMAX

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.gamma >= 0, "gamma", "must be >= 0")

    def __call__(self, logits: Tensor, labels: Tensor, state: nn.Module | None = None) -> Tensor:
        return softmax_focal_loss(logits, labels, alpha=None, gamma=self.gamma)


@dataclass
class SigmoidClsLoss(ClsLoss):
    """A one-vs-all loss: one-hot targets from the labels, optionally smoothed, summed over classes."""

    label_smoothing: float = opt(
        0.0, "targets 1 - eps / 2 and eps / 2 instead of 1 and 0 (Bag of Freebies, sigmoid form); 0 = off"
    )

    activation: ClassVar[str] = SIGMOID

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1) (0 = off)")

    def __call__(self, logits: Tensor, labels: Tensor, state: nn.Module | None = None) -> Tensor:
        fg = labels > 0
        targets = torch.zeros_like(logits)
        targets[fg, labels[fg] - 1] = 1.0
        targets = smooth_binary_targets(targets, self.label_smoothing)
        return self.elementwise(logits, targets, state).sum(dim=-1)

    @abstractmethod
    def elementwise(self, logits: Tensor, targets: Tensor, state: nn.Module | None) -> Tensor:
        """[K, C] loss of each logit against its (smoothed) binary target."""


@dataclass
class SigmoidFocal(SigmoidClsLoss):
    """Sigmoid focal loss (RetinaNet), by hardmine's kernel (torchvision's values)."""

    alpha: float = opt(0.25, "weight of the foreground term (1 - alpha: background); negative = off")
    gamma: float = opt(2.0, "focusing parameter: (1 - p_t) ** gamma down-weights easy samples")

    name: ClassVar[str] = "focal"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha <= 1.0, "alpha", "must be in [0, 1], or negative (off)")
        require(self.gamma >= 0, "gamma", "must be >= 0")

    def elementwise(self, logits: Tensor, targets: Tensor, state: nn.Module | None) -> Tensor:
        alpha = self.alpha if self.alpha >= 0 else -1.0
        return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=self.gamma)


@dataclass
class BCE(SigmoidClsLoss):
    """Sigmoid binary cross-entropy, alpha-balanced when alpha >= 0."""

    alpha: float = opt(
        0.25, "alpha-balancing: foreground terms times alpha, background 1 - alpha; negative = off"
    )

    name: ClassVar[str] = "bce"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha <= 1.0, "alpha", "must be in [0, 1], or negative (off)")

    def elementwise(self, logits: Tensor, targets: Tensor, state: nn.Module | None) -> Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if self.alpha >= 0:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss


@dataclass
class GHMCLoss(SigmoidClsLoss):
    """GHM-C (`hardmine.losses.ghm.GHMC`): BCE re-weighted by the density of its gradient norm.

    Normalised by its own element count (the sampled candidates times the classes, at least 1), as
    in the authors' code, not by the head's normaliser. Its state is GHMC's moving average.
    """

    bins: int = opt(30, "gradient-norm bins (official config: 30)")
    momentum: float = opt(0.75, "EMA momentum of the bin counts; 0 = off (official: 0.75)")

    name: ClassVar[str] = "ghm"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.bins >= 1, "bins", "must be >= 1")
        require(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")

    def state(self) -> nn.Module:
        return GHMC(self.bins, self.momentum, reduction="none")

    def elementwise(self, logits: Tensor, targets: Tensor, state: nn.Module | None) -> Tensor:
        if state is None:
            raise ValueError("GHM-C keeps a moving average: pass the module made by its state()")
        return state(logits, targets)

    def reduce(self, weighted: Tensor, normaliser: Tensor | float, num_elements: int) -> Tensor:
        return weighted.sum() / max(num_elements, 1)
