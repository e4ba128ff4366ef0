"""mIoU, per-class IoU and pixel accuracy (torchmetrics) on a hand-made case."""

from __future__ import annotations

import math

import pytest
import torch

from hardmine.segmentation.metrics import SegmentationMetrics

TARGET = torch.tensor([[[0, 0, 1, 1], [255, 2, 2, 0]]])
PREDICTION = torch.tensor([[[0, 1, 1, 1], [3, 2, 0, 0]]])


def test_hand_made_case() -> None:
    metrics = SegmentationMetrics(["a", "b", "c"])
    metrics.update(PREDICTION, TARGET)
    out = metrics.compute()
    # background: 2 right of 3 predicted and 3 true -> 2 / 4; a: 2 / 3; b: 1 / 2; c: predicted
    # only on the ignored pixel -> empty union, no IoU, left out of the mean
    assert out["IoU/background"] == pytest.approx(0.5)
    assert out["IoU/a"] == pytest.approx(2 / 3)
    assert out["IoU/b"] == pytest.approx(0.5)
    assert math.isnan(out["IoU/c"])
    assert out["mIoU"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert out["pixel_accuracy"] == pytest.approx(5 / 7)


def test_accumulates_over_batches_and_takes_logits() -> None:
    metrics = SegmentationMetrics(["a", "b", "c"])
    metrics.update(PREDICTION[:, :1], TARGET[:, :1])
    logits = torch.nn.functional.one_hot(PREDICTION[:, 1:], 4).permute(0, 3, 1, 2).float()
    metrics.update(logits, TARGET[:, 1:])
    assert metrics.compute()["mIoU"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    metrics.reset()
    metrics.update(TARGET.clamp_max(3), TARGET)
    assert metrics.compute()["mIoU"] == 1.0


def test_a_class_predicted_but_absent_counts_as_zero() -> None:
    metrics = SegmentationMetrics(["a", "b", "c"])
    metrics.update(torch.tensor([[[3, 0, 1, 1]]]), torch.tensor([[[0, 0, 1, 1]]]))
    out = metrics.compute()
    assert out["IoU/c"] == 0.0 and math.isnan(out["IoU/b"])
    assert out["mIoU"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        SegmentationMetrics(["a"]).update(
            torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long)
        )
