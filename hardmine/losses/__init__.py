"""Loss functions and the one table of the heads' losses.

Soft sampling (focal, GHM), sampling-free guided scaling, label smoothing and box regression
(balanced L1, GIoU) as plain functions and modules; `CLS_LOSSES` and `REG_LOSSES` map each config
name to its declaration (`hardmine.losses.classification`, `hardmine.losses.box`): a dataclass of
the loss's options called with the one signature every head uses. See docs/soft-sampling.md.
"""

from hardmine.losses.balanced_l1 import balanced_l1_loss
from hardmine.losses.box import L1, BalancedL1, GHMRLoss, GIoU, RegLoss, SmoothL1
from hardmine.losses.classification import (
    BCE,
    SIGMOID,
    SOFTMAX,
    ClsLoss,
    CrossEntropy,
    GHMCLoss,
    SigmoidFocal,
    SoftmaxFocal,
)
from hardmine.losses.focal import sigmoid_focal_loss, softmax_focal_loss
from hardmine.losses.ghm import GHMC, GHMR
from hardmine.losses.guided import guided_loss_scale
from hardmine.losses.smoothing import smooth_binary_targets

#: Config name -> classification loss (`roi_head.cls_loss`, `rpn.cls_loss`, `dense_head.cls_loss`).
CLS_LOSSES: dict[str, type[ClsLoss]] = {
    loss.name: loss for loss in (CrossEntropy, SoftmaxFocal, SigmoidFocal, BCE, GHMCLoss)
}
#: Config name -> box-regression loss (`roi_head.reg_loss`, `rpn.reg_loss`, `dense_head.reg_loss`).
REG_LOSSES: dict[str, type[RegLoss]] = {
    loss.name: loss for loss in (SmoothL1, L1, BalancedL1, GIoU, GHMRLoss)
}

__all__ = [
    "BCE",
    "CLS_LOSSES",
    "GHMC",
    "GHMR",
    "L1",
    "REG_LOSSES",
    "SIGMOID",
    "SOFTMAX",
    "BalancedL1",
    "ClsLoss",
    "CrossEntropy",
    "GHMCLoss",
    "GHMRLoss",
    "GIoU",
    "RegLoss",
    "SigmoidFocal",
    "SmoothL1",
    "SoftmaxFocal",
    "balanced_l1_loss",
    "guided_loss_scale",
    "sigmoid_focal_loss",
    "smooth_binary_targets",
    "softmax_focal_loss",
]
