"""GHM-C and GHM-R: gradient harmonizing losses (Li, Liu, Wang, "Gradient Harmonized Single-stage
Detector", AAAI 2019).

Each valid element's gradient norm g (|sigmoid(x) - t| for classification, |d| / sqrt(d^2 + mu^2)
for the "authentic smooth L1" of a regression residual d) falls into one of `bins` equal-width bins,
edges[i] <= g < edges[i + 1]. An element's weight is tot / (n * count of its bin), with tot the
number of valid elements (GHM-R: the sum of the label weights), n the number of non-empty bins and,
with momentum, the count replaced by an exponential moving average kept in the buffer `acc_sum`
(updated for non-empty bins only). The loss is sum(weight * elementwise loss) / tot. Edges, the EMA
and the normalisers follow the authors' code; everything here is vectorised: no per-bin Python loop
and no host synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmine.losses.focal import check_reduction


def harmonizing_weights(
    g: Tensor, valid: Tensor, edges: Tensor, tot: Tensor, acc_sum: Tensor | None = None, momentum: float = 0.0
) -> Tensor:
    """Per-element GHM weight tot / (n * bin count); 0 for invalid elements and g outside the edges.

    g: gradient norms; valid: bool mask of g's shape; edges: [bins + 1] increasing; tot: scalar
    tensor. With `acc_sum` ([bins], updated in place) the bin counts are its moving average.
    """
    bins = edges.numel() - 1
    # Bin i holds edges[i] <= g < edges[i + 1]; invalid elements go to the extra bin `bins` (weight 0).
    index = torch.bucketize(g, edges[1:].to(g.dtype), right=True).masked_fill_(~valid, bins).view(-1)
    counts = torch.zeros(bins + 1, dtype=g.dtype, device=g.device)
    counts.index_add_(0, index, torch.ones((), dtype=g.dtype, device=g.device).expand(index.numel()))
    counts = counts[:bins]
    non_empty = counts > 0
    if acc_sum is not None:
        acc_sum.copy_(torch.where(non_empty, momentum * acc_sum + (1 - momentum) * counts, acc_sum))
        counts = acc_sum.to(g.dtype)
    per_bin = torch.where(non_empty, tot / counts, 0.0) / non_empty.sum().clamp_min(1)
    return torch.cat([per_bin, per_bin.new_zeros(1)])[index].view(g.shape)


class _GHM(nn.Module):
    """Edges, the EMA buffer and the reduction shared by GHM-C and GHM-R."""

    def __init__(self, bins: int, momentum: float, last_edge: float, reduction: str) -> None:
        super().__init__()
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        check_reduction(reduction)
        self.bins = bins
        self.momentum = momentum
        self.reduction = reduction
        edges = torch.arange(bins + 1, dtype=torch.float32) / bins
        edges[-1] = last_edge
        self.register_buffer("edges", edges, persistent=False)
        self.acc_sum: Tensor | None
        self.register_buffer("acc_sum", torch.zeros(bins) if momentum > 0 else None)

    def _weights(self, g: Tensor, valid: Tensor, tot: Tensor) -> Tensor:
        return harmonizing_weights(g, valid, self.edges, tot, self.acc_sum, self.momentum)

    def _reduce(self, loss: Tensor, tot: Tensor) -> Tensor:
        if self.reduction == "mean":
            return loss.sum() / tot
        return loss.sum() if self.reduction == "sum" else loss


class GHMC(_GHM):
    """GHM-C: binary cross-entropy with logits, harmonized by the density of |sigmoid(x) - t|.

    forward(pred, target, label_weight=None): pred logits and binary targets of one shape (e.g. [K, C]
    one-hot), label_weight broadcastable to it whose sign marks the valid elements (> 0; its values
    are not weights, as in the authors' code). reduction "mean" is the paper's sum / tot, "sum" the
    harmonized sum, "none" the harmonized elementwise loss. Computed in float32 (float64 stays).
    Every call updates the EMA, as in the authors' code.
    """

    def __init__(self, bins: int = 30, momentum: float = 0.75, reduction: str = "mean") -> None:
        super().__init__(bins, momentum, last_edge=1.0 + 1e-6, reduction=reduction)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor | None = None) -> Tensor:
        pred = pred.to(torch.promote_types(pred.dtype, torch.float32))
        target = target.to(pred.dtype)
        with torch.no_grad():
            if label_weight is None:
                label_weight = torch.ones((), dtype=pred.dtype, device=pred.device)
            valid = (label_weight > 0).expand_as(pred)
            tot = valid.sum().to(pred.dtype).clamp_min(1.0)
            g = torch.sigmoid(pred).sub_(target).abs_()
            weights = self._weights(g, valid, tot)
        if self.reduction == "mean":
            return F.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum") / tot
        return self._reduce(F.binary_cross_entropy_with_logits(pred, target, weights, reduction="none"), tot)


class GHMR(_GHM):
    """GHM-R: the "authentic smooth L1" sqrt(d^2 + mu^2) - mu of residuals d, harmonized by the density
    of its gradient norm |d| / sqrt(d^2 + mu^2).

    forward(pred, target, label_weight=None): box deltas and their targets of one shape (e.g. [K, 4]),
    label_weight broadcastable to it, > 0 where valid; tot is its sum (at least 1), as in the authors'
    code. Reductions as in `GHMC`. Computed in float32 (float64 stays).
    """

    def __init__(
        self, mu: float = 0.02, bins: int = 10, momentum: float = 0.7, reduction: str = "mean"
    ) -> None:
        if mu <= 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        super().__init__(bins, momentum, last_edge=1e3, reduction=reduction)
        self.mu = mu

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor | None = None) -> Tensor:
        diff = pred.to(torch.promote_types(pred.dtype, torch.float32)) - target
        square = diff.square()
        root = (square + self.mu**2).sqrt()
        loss = square / (root + self.mu)  # root - mu without cancellation for small |d|
        with torch.no_grad():
            if label_weight is None:
                label_weight = torch.ones((), dtype=diff.dtype, device=diff.device)
            label_weight = label_weight.expand_as(diff)
            tot = label_weight.sum().to(diff.dtype).clamp_min(1.0)
            g = diff.abs() / root
            weights = self._weights(g, label_weight > 0, tot)
        return self._reduce(loss * weights, tot)
