"""COCO metrics on hand-made cases whose values are worked out by hand."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hardmine.data.records import Category, DatasetIndex, ImageRecord
from hardmine.engine.coco_eval import (
    METRIC_KEYS,
    coco_metrics,
    format_metrics_table,
    to_coco_results,
    write_coco_results,
    write_metrics_json,
)

# 50x50 boxes: area 2500, all in COCO's "medium" range.
OBJECTS = np.array([[10, 10, 60, 60], [100, 100, 150, 150], [200, 10, 250, 60]], np.float32)
MISS = [0.0, 200.0, 50.0, 250.0]  # overlaps no object


def make_index(records: list[ImageRecord], category_ids: tuple[int, ...] = (5, 9)) -> DatasetIndex:
    categories = [Category(cid, f"class{cid}", label) for label, cid in enumerate(category_ids, start=1)]
    return DatasetIndex(records, categories, Path("images"), Path("ann.json"))


def record(image_id: int, boxes=OBJECTS, labels=(1, 1, 1), **extra) -> ImageRecord:
    return ImageRecord(
        image_id,
        f"{image_id}.jpg",
        300,
        300,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
        **extra,
    )


def prediction(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_perfect_detections_give_ap_one():
    index = make_index([record(1), record(2, OBJECTS[:2], (1, 2)), record(3, np.zeros((0, 4)), ())])
    predictions = {
        1: prediction(OBJECTS, [0.9, 0.8, 0.7], [1, 1, 1]),
        2: prediction(OBJECTS[:2], [0.6, 0.5], [1, 2]),
    }
    metrics = coco_metrics(index, predictions)
    assert tuple(metrics) == METRIC_KEYS
    for key in ("AP", "AP50", "AP75", "APm", "AR100"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-9)
    # No small or large objects: COCO's -1 is kept.
    assert metrics["APs"] == -1.0 and metrics["APl"] == -1.0


def test_false_positive_above_true_positive_follows_101_point_interpolation():
    # Ranked TP, FP, TP with 3 objects: recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3.
    # Interpolated precision is 1 for recall thresholds 0.00..0.33 (34 of them), 2/3 for 0.34..0.66
    # (33) and 0 above 2/3 (34): AP = (34 + 33 * 2/3) / 101 = 56/101 at every IoU threshold.
    index = make_index([record(1)])
    boxes = [OBJECTS[0], MISS, OBJECTS[1]]
    metrics = coco_metrics(index, {1: prediction(boxes, [0.9, 0.8, 0.7], [1, 1, 1])})
    for key in ("AP", "AP50", "AP75", "APm"):
        assert metrics[key] == pytest.approx(56 / 101, abs=1e-6)
    assert metrics["AR100"] == pytest.approx(2 / 3, abs=1e-6)


def test_detection_on_crowd_region_is_not_a_false_positive():
    crowd = dict(ignore_boxes=np.array([[200, 200, 280, 280]], np.float32), ignore_labels=np.array([1]))
    index = make_index([record(1, OBJECTS[:2], (1, 2), **crowd)])
    boxes = [[205, 205, 275, 275], OBJECTS[0], OBJECTS[1]]
    metrics = coco_metrics(index, {1: prediction(boxes, [0.9, 0.8, 0.7], [1, 1, 2])})
    assert metrics["AP50"] == pytest.approx(1.0, abs=1e-9)  # class 1 would be 0.5 if the crowd hit were a FP
    # The crowd region only covers its own class: a class-2 detection there is a FP ranked above
    # class 2's TP (AP 0.5), so the mean over the two classes is 0.75.
    metrics = coco_metrics(index, {1: prediction(boxes, [0.9, 0.8, 0.7], [2, 1, 2])})
    assert metrics["AP50"] == pytest.approx(0.75, abs=1e-6)


def test_images_missing_from_predictions_count_as_no_detections():
    index = make_index([record(1, OBJECTS[:1], (1,)), record(2, OBJECTS[1:2], (1,))])
    metrics = coco_metrics(index, {1: prediction(OBJECTS[:1], [0.9], [1])})
    assert metrics["AP"] == pytest.approx(51 / 101, abs=1e-6)  # precision 1 up to recall 0.50
    assert metrics["AR100"] == pytest.approx(0.5, abs=1e-9)


def test_no_predictions_give_zero():
    # One small, one medium and one large object, so no area range is empty.
    boxes = [[0, 0, 20, 20], [50, 50, 100, 100], [100, 100, 220, 220]]
    index = make_index([record(1, boxes, (1, 1, 2)), record(2, np.zeros((0, 4)), ())])
    assert coco_metrics(index, {}) == dict.fromkeys(METRIC_KEYS, 0.0)
    empty = prediction(np.zeros((0, 4)), [], [])
    assert coco_metrics(index, {1: empty, 2: empty}) == dict.fromkeys(METRIC_KEYS, 0.0)


def test_dataset_without_objects_gives_minus_one():
    index = make_index([record(1, np.zeros((0, 4)), ())])
    assert coco_metrics(index, {}) == dict.fromkeys(METRIC_KEYS, -1.0)


def test_bad_predictions_raise_value_error():
    index = make_index([record(1)])
    with pytest.raises(ValueError, match="42"):
        coco_metrics(index, {42: prediction(OBJECTS[:1], [0.9], [1])})
    with pytest.raises(ValueError, match="labels"):
        coco_metrics(index, {1: prediction(OBJECTS[:1], [0.9], [3])})
    with pytest.raises(ValueError, match="1 boxes, 2 scores"):
        coco_metrics(index, {1: prediction(OBJECTS[:1], [0.9, 0.8], [1])})


def test_evaluator_output_is_silent_unless_verbose(capsys):
    index = make_index([record(1)])
    coco_metrics(index, {1: prediction(OBJECTS, [0.9, 0.8, 0.7], [1, 1, 1])})
    assert capsys.readouterr().out == ""
    coco_metrics(index, {1: prediction(OBJECTS, [0.9, 0.8, 0.7], [1, 1, 1])}, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_coco_results_use_dataset_category_ids_and_xywh():
    index = make_index([record(7, OBJECTS[:2], (1, 2))], category_ids=(5, 9))
    numpy_prediction = {
        "boxes": np.array([[10.123, 20.0, 30.0, 60.5], [0, 0, 5, 5]], np.float32),
        "scores": np.array([0.87, 0.5], np.float32),
        "labels": np.array([2, 1]),
    }
    results = to_coco_results(index, {np.int64(7): numpy_prediction})
    assert results == [
        {"image_id": 7, "category_id": 9, "bbox": [10.12, 20.0, 19.88, 40.5], "score": 0.87},
        {"image_id": 7, "category_id": 5, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5},
    ]
    assert all(type(r["image_id"]) is int and type(r["category_id"]) is int for r in results)


def test_written_files(tmp_path):
    index = make_index([record(1)])
    predictions = {1: prediction(OBJECTS, [0.9, 0.8, 0.7], [1, 1, 2])}
    assert write_coco_results(tmp_path / "results.json", index, predictions) == tmp_path / "results.json"
    assert json.loads((tmp_path / "results.json").read_text()) == to_coco_results(index, predictions)

    metrics = {"AR100": 0.5, "AP": 0.25}
    path = write_metrics_json(tmp_path / "out" / "metrics.json", metrics, extra={"run": "ohem"})
    assert path == tmp_path / "out" / "metrics.json"
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(written.items()) == [("AR100", 0.5), ("AP", 0.25), ("run", "ohem")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json"]  # no temp file left
    with pytest.raises(ValueError, match="AP"):
        write_metrics_json(tmp_path / "bad.json", metrics, extra={"AP": 1.0})
    assert not (tmp_path / "bad.json").exists()


def test_metrics_table():
    table = format_metrics_table({"AP": 0.5544554, "AP50": 1.0, "APs": -1.0})
    header, row = table.splitlines()
    assert header.split() == ["AP", "AP50", "APs"]
    assert row.split() == ["55.4", "100.0", "-"]
    assert len(header) == len(row)
