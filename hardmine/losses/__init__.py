"""Loss functions: soft sampling (focal, GHM), sampling-free guided scaling, label smoothing and box
regression (balanced L1); see DESIGN.md."""

from hardmine.losses.balanced_l1 import BalancedL1Loss, balanced_l1_loss
from hardmine.losses.focal import SigmoidFocalLoss, SoftmaxFocalLoss, sigmoid_focal_loss, softmax_focal_loss
from hardmine.losses.ghm import GHMC, GHMR
from hardmine.losses.guided import guided_loss_scale
from hardmine.losses.smoothing import smooth_binary_targets

__all__ = [
    "GHMC",
    "GHMR",
    "BalancedL1Loss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "balanced_l1_loss",
    "guided_loss_scale",
    "sigmoid_focal_loss",
    "smooth_binary_targets",
    "softmax_focal_loss",
]
