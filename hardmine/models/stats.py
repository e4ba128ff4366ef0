"""Per-iteration sampling diagnostics shared by every head (RPN, RoI head, dense head)."""

from __future__ import annotations

import torch
from torch import Tensor


def sampling_stats(cls_loss: Tensor, labels: Tensor, num_candidates: int) -> dict[str, Tensor]:
    """Detached 0-dim statistics of one head's sampled batch.

    cls_loss: [K] unnormalised per-sample classification loss of the sampled candidates.
    labels:   [K] their targets (>= 1 foreground, 0 background).
    Keys: num_candidates, num_fg, num_bg, cls_loss_fg, cls_loss_bg (sums over fg / bg samples).
    """
    cls_loss = cls_loss.detach().float()
    fg = labels > 0
    return {
        "num_candidates": torch.tensor(float(num_candidates)),
        "num_fg": fg.sum().float(),
        "num_bg": (~fg).sum().float(),
        "cls_loss_fg": cls_loss[fg].sum(),
        "cls_loss_bg": cls_loss[~fg].sum(),
    }
