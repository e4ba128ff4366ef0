"""Per-image confusion matrices and the mIoU of resampled image sets, against torchmetrics."""

import numpy as np
import pytest
import torch

from hardmine.segmentation.image_scores import (
    ImageConfusions,
    image_confusion,
    miou,
    read_confusions,
    write_confusions,
)
from hardmine.segmentation.metrics import SegmentationMetrics


def test_confusion_counts_true_rows_and_predicted_columns_and_ignores_255() -> None:
    target = torch.tensor([[0, 1, 1, 255]])
    prediction = torch.tensor([[0, 1, 2, 2]])
    expected = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    assert (image_confusion(prediction, target, 3) == expected).all()


def test_miou_skips_classes_with_an_empty_union() -> None:
    # background IoU 1/1, class 1: 1 / (1 + 1) = 0.5, class 2 only predicted: 0 / 1; class 3 absent
    confusion = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert miou(confusion) == pytest.approx((1 + 0.5 + 0) / 3)
    assert np.isnan(miou(np.zeros((2, 2))))


def test_the_whole_sets_miou_is_torchmetrics_and_replicates_resample_images(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    targets = [torch.randint(0, 3, (5, 6), generator=gen) for _ in range(3)]
    predictions = [torch.randint(0, 3, (5, 6), generator=gen) for _ in range(3)]
    targets[1][0, :3] = 255
    metrics = SegmentationMetrics(["a", "b"])
    for p, t in zip(predictions, targets):
        metrics.update(p[None], t[None])
    matrices = {10 + i: image_confusion(p, t, 3) for i, (p, t) in enumerate(zip(predictions, targets))}
    path = write_confusions(tmp_path / "c.json", matrices, ["background", "a", "b"])
    read = read_confusions(path)
    assert read.image_ids == (10, 11, 12)
    assert read.miou() == pytest.approx(metrics.compute()["mIoU"])
    # replicate 0: image 0 twice and image 2; replicate 1: image 1 three times
    samples = np.array([[0, 0, 2], [1, 1, 1]])
    stack = read.matrices
    expected = [float(miou(2 * stack[0] + stack[2])), float(miou(stack[1]))]
    assert read.replicates(samples) == pytest.approx(expected)
    assert ImageConfusions((1,), stack[:1]).miou() == pytest.approx(float(miou(stack[0])))
