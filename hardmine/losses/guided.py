"""Guided loss scaling of sampling-free training (Chen et al., "Is Sampling Heuristics Necessary
in Training Deep Object Detectors?").

Without a sampler, a head's classification loss sums over every candidate and its magnitude no
longer matches the box loss. Guided scaling fixes the ratio each step: the classification loss
is multiplied by `scale * box / cls`, computed without autograd, so its value equals `scale`
times the box loss while its gradient keeps the direction of the unscaled classification loss.
"""

from __future__ import annotations

import torch
from torch import Tensor


def guided_loss_scale(cls_loss: Tensor, box_loss: Tensor, scale: float = 1.0) -> Tensor:
    """`cls_loss` rescaled to the value `scale * box_loss`; no gradient flows through the factor.

    When either loss is 0 (a batch without foreground has no box loss) the factor is 0, so such a
    batch contributes no classification gradient either; the result is always finite.
    """
    with torch.no_grad():
        cls_value, box_value = cls_loss.detach().float(), box_loss.detach().float()
        usable = (cls_value > 0) & torch.isfinite(box_value)
        factor = torch.where(usable, scale * box_value / cls_value.clamp_min(1e-12), 0.0)
    return cls_loss * factor.to(cls_loss.dtype)
