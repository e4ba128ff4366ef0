"""Per-sample loss functions for the RoI head, selectable by name.

Each returns one value per sample (no reduction) so heads can weight, rank (OHEM) and normalise
samples themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from hardmine.losses.balanced_l1 import balanced_l1_loss
from hardmine.losses.focal import softmax_focal_loss

ClsLoss = Callable[[Tensor, Tensor], Tensor]
RegLoss = Callable[[Tensor, Tensor, float], Tensor]


def softmax_cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """[K] softmax cross-entropy over C + 1 classes (label 0 = background), optionally against
    smoothed targets (1 - eps) one_hot + eps / (C + 1) (`hardmine.losses.smoothing`)."""
    return F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)


def softmax_focal(logits: Tensor, labels: Tensor, gamma: float = 2.0) -> Tensor:
    """[K] softmax focal loss over C + 1 classes, no alpha: -(1 - p_y) ** gamma log p_y."""
    return softmax_focal_loss(logits, labels, alpha=None, gamma=gamma)


def smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """[K] smooth L1 summed over the 4 box deltas."""
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="none").sum(dim=-1)


def l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """[K] L1 summed over the 4 box deltas (`beta` unused)."""
    return (pred - target).abs().sum(dim=-1)


def balanced_l1(pred: Tensor, target: Tensor, beta: float, alpha: float = 0.5, gamma: float = 1.5) -> Tensor:
    """[K] balanced L1 (Libra R-CNN) summed over the 4 box deltas."""
    return balanced_l1_loss(pred, target, alpha, gamma, beta).sum(dim=-1)


#: Config name -> per-sample classification loss of softmax heads (extra options by keyword).
CLS_LOSSES: dict[str, ClsLoss] = {"ce": softmax_cross_entropy, "softmax_focal": softmax_focal}
#: Config name -> per-sample box regression loss on encoded deltas (extra options by keyword).
REG_LOSSES: dict[str, RegLoss] = {"smooth_l1": smooth_l1, "l1": l1, "balanced_l1": balanced_l1}
