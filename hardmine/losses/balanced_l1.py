"""Balanced L1 loss (Pang et al., "Libra R-CNN: Towards Balanced Learning for Object Detection", CVPR 2019).

With x = |pred - target| and b = exp(gamma / alpha) - 1 (so that the two pieces meet at x = beta):

    L(x) = alpha / b * (b x + 1) * log(b x / beta + 1) - alpha x     if x < beta
    L(x) = gamma x + gamma / b - alpha beta                           otherwise

It raises the gradient of inliers (x < beta) above smooth L1's, so accurate boxes are not drowned
out by outliers; gamma caps the outliers' gradient. The formula is the authors' implementation's:
value and gradient are continuous at beta for beta = 1 (the paper's), the value for any beta.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def balanced_l1_loss(
    pred: Tensor,
    target: Tensor,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
) -> Tensor:
    """Elementwise balanced L1 of `pred - target` (same shape)."""
    if alpha <= 0 or gamma <= 0 or beta <= 0:
        raise ValueError(f"alpha, gamma and beta must be > 0, got {alpha}, {gamma}, {beta}")
    x = (pred - target).abs()
    b = math.expm1(gamma / alpha)
    xi = x.clamp_max(beta)  # the inlier piece is only used below beta; clamping keeps it finite
    inlier = alpha / b * (b * xi + 1) * torch.log1p(b * xi / beta) - alpha * xi
    outlier = gamma * x + (gamma / b - alpha * beta)
    return torch.where(x < beta, inlier, outlier)
