"""Pascal VOC metrics on hand-made precision-recall curves with exact expected values."""

from pathlib import Path

import numpy as np
import pytest
import torch

from hardmine.data.records import Category, DatasetIndex, ImageRecord
from hardmine.engine.voc_eval import area_ap, eleven_point_ap, voc_metrics

A, B, C, D = [10, 10, 60, 60], [100, 100, 150, 150], [200, 10, 250, 60], [10, 200, 60, 250]
MISS = [150, 200, 190, 240]  # overlaps no box above


def make_index(records: list[ImageRecord]) -> DatasetIndex:
    categories = [Category(11, "cat", 1), Category(12, "dog", 2)]
    return DatasetIndex(records, categories, Path("images"), Path("ann.xml"))


def record(image_id: int, boxes, labels, difficult=(), difficult_labels=()) -> ImageRecord:
    return ImageRecord(
        image_id,
        f"{image_id}.jpg",
        300,
        300,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
        ignore_boxes=np.asarray(difficult, np.float32).reshape(-1, 4),
        ignore_labels=np.asarray(difficult_labels, np.int64),
    )


def prediction(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


# Ranked TP, FP, TP, FP, TP over 4 objects:
# recall 1/4, 1/4, 2/4, 2/4, 3/4; precision 1, 1/2, 2/3, 1/2, 3/5.
# Area AP = 1/4 * (1 + 2/3 + 3/5) = 17/30.
# 11-point: recall >= 0, 0.1, 0.2 -> 1; >= 0.3, 0.4, 0.5 -> 2/3; >= 0.6, 0.7 -> 3/5; beyond -> 0,
# so (3 + 2 + 1.2) / 11 = 31/55.
RECALL = np.array([1, 1, 2, 2, 3]) / 4
PRECISION = np.array([1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])


def test_ap_formulas_on_hand_made_curve():
    assert area_ap(RECALL, PRECISION) == pytest.approx(17 / 30, abs=1e-12)
    assert eleven_point_ap(RECALL, PRECISION) == pytest.approx(31 / 55, abs=1e-12)
    assert area_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert eleven_point_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_voc_metrics_reproduce_hand_made_curve():
    index = make_index([record(1, [A, B], [1, 1]), record(2, [C, D], [1, 1])])
    predictions = {
        # Image 1: TP on A (0.9), a miss (0.8), a duplicate on A (0.6) -> ranks 1, 2, 4.
        1: prediction([A, MISS, [11, 11, 61, 61]], [0.9, 0.8, 0.6], [1, 1, 1]),
        # Image 2: TP on C (0.7), TP on D (0.5) -> ranks 3, 5.
        2: prediction([D, C], [0.5, 0.7], [1, 1]),
    }
    metrics = voc_metrics(index, predictions)
    assert metrics == pytest.approx({"VOC07_mAP": 31 / 55, "mAP": 17 / 30, "AP/cat": 17 / 30}, abs=1e-9)


def test_detections_on_difficult_boxes_are_ignored():
    index = make_index([record(1, [A], [1], difficult=[B], difficult_labels=[1])])
    # Two hits on the difficult box ranked first: neither TP nor FP, so AP stays 1.
    predictions = {1: prediction([B, [101, 101, 151, 151], A], [0.9, 0.8, 0.7], [1, 1, 1])}
    assert voc_metrics(index, predictions) == pytest.approx({"VOC07_mAP": 1.0, "mAP": 1.0, "AP/cat": 1.0})
    # The difficult box is only of class "cat": a "dog" hit on it is an ordinary FP; dog has no
    # objects, so it has no entry and stays out of the mean.
    predictions = {1: prediction([B, A], [0.9, 0.7], [2, 1])}
    assert voc_metrics(index, predictions) == pytest.approx({"VOC07_mAP": 1.0, "mAP": 1.0, "AP/cat": 1.0})


def test_class_with_only_difficult_boxes_is_excluded_from_the_mean():
    index = make_index([record(1, [A], [1], difficult=[B], difficult_labels=[2])])
    predictions = {1: prediction([A, MISS], [0.9, 0.8], [1, 2])}
    assert voc_metrics(index, predictions) == pytest.approx({"VOC07_mAP": 1.0, "mAP": 1.0, "AP/cat": 1.0})


def test_detection_goes_to_its_best_box_even_if_already_claimed():
    # The second detection overlaps the claimed object (IoU 2/3) more than the free one (IoU 7/13),
    # so under the devkit rule it is a duplicate (FP) and the second object stays missed.
    first, second = [0, 0, 100, 100], [0, 50, 100, 150]
    index = make_index([record(1, [first, second], [1, 1])])
    predictions = {1: prediction([first, [0, 20, 100, 120]], [0.9, 0.8], [1, 1])}
    metrics = voc_metrics(index, predictions)
    assert metrics["mAP"] == pytest.approx(0.5)
    assert metrics["VOC07_mAP"] == pytest.approx(6 / 11)


def test_iou_threshold():
    index = make_index([record(1, [[0, 0, 100, 100]], [1])])
    predictions = {1: prediction([[0, 20, 100, 120]], [0.9], [1])}  # IoU 2/3
    assert voc_metrics(index, predictions)["mAP"] == pytest.approx(1.0)
    assert voc_metrics(index, predictions, iou_threshold=0.7)["mAP"] == 0.0


def test_per_class_entries_and_missing_images():
    index = make_index([record(1, [A, B], [1, 2]), record(2, [C], [2])])
    metrics = voc_metrics(index, {1: prediction([A, B], [0.9, 0.8], [1, 2])})
    # cat: 1/1 found -> 1; dog: 1 of 2 found (image 2 has no predictions) -> 0.5 and 6/11.
    assert metrics == pytest.approx(
        {"VOC07_mAP": (1 + 6 / 11) / 2, "mAP": 0.75, "AP/cat": 1.0, "AP/dog": 0.5}, abs=1e-9
    )


def test_no_predictions_and_no_objects():
    index = make_index([record(1, [A], [1])])
    assert voc_metrics(index, {}) == {"VOC07_mAP": 0.0, "mAP": 0.0, "AP/cat": 0.0}
    with pytest.raises(ValueError, match="42"):
        voc_metrics(index, {42: prediction([A], [0.9], [1])})
    assert voc_metrics(make_index([record(1, [], [])]), {}) == {"VOC07_mAP": -1.0, "mAP": -1.0}
