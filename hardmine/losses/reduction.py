"""The `weight` / `reduction` / `avg_factor` convention shared by the loss modules."""

from __future__ import annotations

from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    """Raise ValueError unless `reduction` is one of none / mean / sum."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def weight_reduce_loss(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Multiply an elementwise loss by `weight` (broadcastable), then reduce it.

    Without `avg_factor`: none / mean / sum as usual. With it, the result is the weighted sum divided
    by `avg_factor` (a detector's usual normaliser, e.g. the number of foreground anchors); that needs
    reduction "mean", because "sum" and "none" have no denominator to replace.
    """
    check_reduction(reduction)
    if weight is not None:
        loss = loss * weight
    if avg_factor is not None:
        if reduction != "mean":
            raise ValueError(f"avg_factor needs reduction 'mean', got {reduction!r}")
        return loss.sum() / avg_factor
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
