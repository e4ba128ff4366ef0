"""Label smoothing ("Bag of Freebies for Training Object Detection Neural Networks", Zhang et al. 2019).

Softmax heads over K classes (the RoI head: C objects + background) train against
q'_i = (1 - eps) q_i + eps / K instead of the one-hot q, which is what
`torch.nn.functional.cross_entropy(..., label_smoothing=eps)` computes; the `ce` loss
(`hardmine.losses.classification.CrossEntropy`) passes `eps` to it.

Sigmoid heads (RetinaNet's one-vs-all classifier) solve C binary problems, so the same formula
with K = 2 applies to each: a positive target becomes 1 - eps / 2 and a negative one eps / 2
(`smooth_binary_targets`). GluonCV's YOLOv3 uses this form with eps / 2 = min(1 / C, 1 / 40).
"""

from __future__ import annotations

from torch import Tensor


def smooth_binary_targets(targets: Tensor, eps: float) -> Tensor:
    """Sigmoid label smoothing: t (1 - eps) + eps / 2 elementwise (0 -> eps / 2, 1 -> 1 - eps / 2)."""
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1) (0 = off), got {eps}")
    if eps == 0.0:
        return targets
    return targets * (1.0 - eps) + eps / 2.0
