"""COCO AP on resampled images: hand-computed APs of a two-image set, the same AP as a dataset in
which the drawn images are copied, and fixed draws for a fixed seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hardmine.data.records import Category, DatasetIndex, ImageRecord
from hardmine.engine.coco_eval import coco_metrics, to_coco_results
from hardmine.errors import DataError
from hardmine.report.image_bootstrap import image_samples, per_image_evaluation, read_detections

CATEGORIES = [Category(id=1, name="a", label=1), Category(id=2, name="b", label=2)]


def index_of(records: list[ImageRecord]) -> DatasetIndex:
    return DatasetIndex(records, CATEGORIES, Path("."), Path("val.json"))


def record(image_id: int, boxes: list[list[float]], labels: list[int]) -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        file_name=f"{image_id}.png",
        width=100,
        height=100,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
    )


def prediction(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, np.ndarray]:
    return {
        "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
        "scores": np.asarray(scores, np.float64),
        "labels": np.asarray(labels, np.int64),
    }


def test_hand_computed_ap_of_multisets_of_two_images():
    # image 1: one object, found exactly; image 2: one object, not found.
    index = index_of([record(1, [[0, 0, 10, 10]], [1]), record(2, [[20, 20, 40, 40]], [1])])
    results = to_coco_results(index, {1: prediction([[0, 0, 10, 10]], [0.9], [1])})
    evaluation = per_image_evaluation(index, results)
    assert evaluation.image_ids == (1, 2)
    half = 51 / 101  # recall 0.5 at precision 1: 51 of COCO's 101 recall thresholds (0, 0.01, ..., 0.5)
    assert evaluation.ap() == pytest.approx(half)
    assert evaluation.ap([0, 1]) == evaluation.ap([1, 0]) == pytest.approx(half)
    assert evaluation.ap([0, 0]) == pytest.approx(1.0)  # the found object twice
    assert evaluation.ap([1, 1]) == 0.0  # the missed one twice
    samples = image_samples(2, replicates=20, seed=5)
    expected = [{2: 1.0, 1: half, 0: 0.0}[int((row == 0).sum())] for row in samples]
    np.testing.assert_allclose(evaluation.replicates(samples), expected)


def test_an_image_drawn_twice_counts_as_a_copied_image():
    rng = np.random.default_rng(1)
    records, predictions = [], {}
    for image_id in range(1, 13):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 60, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 40, (n, 2))], axis=1)
        labels = rng.integers(1, 3, n)
        records.append(record(image_id, boxes.tolist(), labels.tolist()))
        found = boxes + rng.normal(0, 3, boxes.shape)  # noisy hits, then some false alarms
        extra = int(rng.integers(0, 3))
        xy = rng.uniform(0, 60, (extra, 2))
        false = np.concatenate([xy, xy + rng.uniform(8, 40, (extra, 2))], axis=1)
        predictions[image_id] = prediction(
            np.concatenate([found, false]).tolist(),
            rng.uniform(0, 1, n + extra).tolist(),
            np.concatenate([labels, rng.integers(1, 3, extra)]).tolist(),
        )
    index = index_of(records)
    evaluation = per_image_evaluation(index, to_coco_results(index, predictions))
    assert evaluation.ap() == pytest.approx(coco_metrics(index, predictions)["AP"], abs=1e-12)
    for sample in image_samples(len(records), replicates=4, seed=3):
        copies, copied_predictions = [], {}
        for new_id, position in enumerate(sample, 1):  # a dataset with the drawn images as copies
            source = records[position]
            copies.append(record(new_id, source.boxes.tolist(), source.labels.tolist()))
            copied_predictions[new_id] = predictions[source.image_id]
        copied = coco_metrics(index_of(copies), copied_predictions)["AP"]
        assert evaluation.ap(sample) == pytest.approx(copied, abs=1e-12)


def test_the_draws_are_fixed_by_the_seed():
    a, b = image_samples(100, replicates=50, seed=0), image_samples(100, replicates=50, seed=0)
    assert a.shape == (50, 100) and a.min() >= 0 and a.max() <= 99
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, image_samples(100, replicates=50, seed=1))


def test_no_ground_truth_in_a_sample_is_nan():
    index = index_of([record(1, [[0, 0, 10, 10]], [1]), record(2, [], [])])
    evaluation = per_image_evaluation(index, [])
    assert np.isnan(evaluation.ap([1, 1])) and evaluation.ap([0, 1]) == 0.0


def test_detections_of_other_data_are_refused(tmp_path):
    index = index_of([record(1, [[0, 0, 10, 10]], [1])])
    path = tmp_path / "detections.json"
    path.write_text(json.dumps([{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    with pytest.raises(DataError, match="image id 9, which the validation set"):
        read_detections(path, index)
    path.write_text("{")
    with pytest.raises(DataError, match="cannot read the detections"):
        read_detections(path, index)
