"""Semantic segmentation metrics over a dataset through torchmetrics: mIoU, per-class IoU and
pixel accuracy, pixels labelled 255 ignored.

IoU of class c = |pred c and target c| / |pred c or target c| over all pixels seen. The mIoU averages
the classes whose union is not empty (a class neither in any target nor in any prediction has no
IoU; one only predicted counts as 0), background included, as mmsegmentation and the VOC
benchmark do. Pixel accuracy is the share of valid pixels predicted right. Under torchrun the
states are summed over processes when computed (torchmetrics' own synchronisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from hardmine.data.masks import IGNORE_LABEL

BACKGROUND = "background"


class SegmentationMetrics:
    """Accumulates predictions batch by batch; `compute` gives `mIoU`, `pixel_accuracy` and
    `IoU/<class>` for background and each of `class_names` (labels 1..C in that order), NaN for a
    class with an empty union."""

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_LABEL) -> None:
        self.names = [BACKGROUND, *class_names]
        num_classes = len(self.names)
        self.metrics = MetricCollection(
            {
                "mIoU": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
                "IoU": MulticlassJaccardIndex(
                    num_classes, average="none", ignore_index=ignore_index, zero_division=float("nan")
                ),
                "pixel_accuracy": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
            }
        )

    def to(self, device: torch.device | str) -> SegmentationMetrics:
        self.metrics.to(device)
        return self

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: `prediction` labels [N, H, W] (or logits [N, C + 1, H, W], reduced by argmax)
        and `target` labels [N, H, W] with 255 where ignored."""
        if prediction.dim() == 4:
            prediction = prediction.argmax(dim=1)
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
            )
        self.metrics.update(prediction, target)

    def compute(self) -> dict[str, float]:
        values = self.metrics.compute()
        out = {"mIoU": float(values["mIoU"]), "pixel_accuracy": float(values["pixel_accuracy"])}
        out.update({f"IoU/{name}": float(v) for name, v in zip(self.names, values["IoU"])})
        return out

    def reset(self) -> None:
        self.metrics.reset()
