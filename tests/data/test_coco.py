"""COCO reader and writer: label mapping, ignore regions, round trips and validation messages."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hardmine.data.coco import MAX_LISTED, load_coco, write_coco
from hardmine.data.records import Category, DatasetIndex, ImageRecord
from hardmine.errors import DataError


def coco_dict() -> dict:
    """Three images (one without annotations), non-contiguous category ids given out of order."""
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 320, "height": 256},
            {"id": 11, "file_name": "sub/b.png", "width": 100, "height": 80},
            {"id": 12, "file_name": "c.png", "width": 64, "height": 64},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 42, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0.5, 1.25, 100.5, 50.75]},
            {"id": 7, "image_id": 12, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"id": 5, "image_id": 12, "category_id": 42, "bbox": [10, 10, 20, 20], "iscrowd": 1},
        ],
        "categories": [
            {"id": 42, "name": "answer"},
            {"id": 3, "name": "three"},
            {"id": 7, "name": "seven"},
        ],
    }


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_labels_follow_sorted_category_ids(tmp_path: Path) -> None:
    index = load_coco(write_json(tmp_path / "train.json", coco_dict()))
    expected = [(3, "three", 1), (7, "seven", 2), (42, "answer", 3)]
    assert [(c.id, c.name, c.label) for c in index.categories] == expected
    assert index.label_to_category_id() == {1: 3, 2: 7, 3: 42}
    first = index.records[0]
    assert first.image_id == 10 and (first.width, first.height) == (320, 256)
    np.testing.assert_array_equal(first.boxes, [[10, 20, 40, 60], [0.5, 1.25, 101, 52]])
    assert first.boxes.dtype == np.float32 and first.labels.dtype == np.int64
    np.testing.assert_array_equal(first.labels, [3, 1])
    np.testing.assert_array_equal(first.annotation_ids, [1, 2])


def test_empty_images_are_kept(tmp_path: Path) -> None:
    index = load_coco(write_json(tmp_path / "train.json", coco_dict()))
    assert [r.image_id for r in index.records] == [10, 11, 12]
    empty = index.records[1]
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,) and empty.ignore_boxes.shape == (0, 4)


def test_iscrowd_becomes_ignore_region(tmp_path: Path) -> None:
    record = load_coco(write_json(tmp_path / "train.json", coco_dict())).records[2]
    np.testing.assert_array_equal(record.boxes, [[1, 2, 4, 6]])
    np.testing.assert_array_equal(record.ignore_boxes, [[10, 10, 30, 30]])
    np.testing.assert_array_equal(record.ignore_labels, [3])
    np.testing.assert_array_equal(record.annotation_ids, [7, 5])  # boxes first, then ignore regions


def test_image_root_defaults_to_annotation_folder(tmp_path: Path) -> None:
    path = write_json(tmp_path / "train.json", coco_dict())
    assert load_coco(path).image_root == tmp_path
    assert load_coco(path, image_root=tmp_path / "imgs").image_root == tmp_path / "imgs"
    assert load_coco(path).source == path


def test_box_within_tolerance_is_clipped(tmp_path: Path) -> None:
    data = coco_dict()
    data["annotations"][0]["bbox"] = [-0.9, -0.5, 320.5, 256.9]  # reaches 319.6 x 256.4
    data["annotations"][1]["bbox"] = [300, 200, 20.8, 56.8]  # reaches 320.8 x 256.8
    record = load_coco(write_json(tmp_path / "train.json", data)).records[0]
    np.testing.assert_allclose(record.boxes, [[0, 0, 319.6, 256], [300, 200, 320, 256]], rtol=0, atol=1e-4)


def test_round_trip(tmp_path: Path) -> None:
    original = load_coco(write_json(tmp_path / "train.json", coco_dict()))
    write_coco(original, tmp_path / "out" / "copy.json")
    again = load_coco(tmp_path / "out" / "copy.json")
    assert again.categories == original.categories
    for a, b in zip(original.records, again.records, strict=True):
        assert (a.image_id, a.file_name, a.width, a.height) == (b.image_id, b.file_name, b.width, b.height)
        for key in ("boxes", "labels", "ignore_boxes", "ignore_labels", "annotation_ids"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
            assert getattr(a, key).dtype == getattr(b, key).dtype


def test_round_trip_is_exact_for_arbitrary_float_boxes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (50, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(0.01, 50, (50, 2)).astype(np.float32)], axis=1)
    record = ImageRecord(0, "x.png", 300, 300, boxes=boxes, labels=np.ones(50, np.int64))
    index = DatasetIndex([record], [Category(5, "thing", 1)], tmp_path, tmp_path / "x.json")
    write_coco(index, tmp_path / "x.json")
    np.testing.assert_array_equal(load_coco(tmp_path / "x.json").records[0].boxes, boxes)


def test_write_numbers_annotations_when_records_have_no_ids(tmp_path: Path) -> None:
    records = [
        ImageRecord(
            i,
            f"{i}.png",
            50,
            50,
            boxes=np.array([[1, 1, 5, 5], [2, 2, 9, 9]], np.float32),
            labels=np.array([1, 2]),
            ignore_boxes=np.array([[0, 0, 3, 3]], np.float32),
            ignore_labels=np.array([2]),
        )
        for i in range(3)
    ]
    categories = [Category(1, "a", 1), Category(2, "b", 2)]
    write_coco(DatasetIndex(records, categories, tmp_path, tmp_path / "x.json"), tmp_path / "x.json")
    ids = np.concatenate([r.annotation_ids for r in load_coco(tmp_path / "x.json").records])
    assert len(ids) == 9 and len(set(ids.tolist())) == 9


Mutation = Callable[[dict], None]


def _set(path: tuple, value: object) -> Mutation:
    def mutate(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple) -> Mutation:
    def mutate(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _append(key: str, item: dict) -> Mutation:
    return lambda data: data[key].append(item)


INVALID_CASES = {
    "missing top-level key": (_delete(("categories",)), ["missing top-level key(s) categories"]),
    "duplicate image id": (
        _set(("images", 1, "id"), 10),
        ["image id 10: duplicate id (images[0] and images[1])"],
    ),
    "duplicate annotation id": (_set(("annotations", 1, "id"), 1), ["annotation id 1: duplicate id"]),
    "duplicate category id": (
        _append("categories", {"id": 7, "name": "again"}),
        ["category id 7: duplicate id"],
    ),
    "unknown image id": (
        _set(("annotations", 0, "image_id"), 99),
        ["annotation id 1 (image id 99): unknown image id 99"],
    ),
    "unknown category id": (
        _set(("annotations", 1, "category_id"), 5),
        ["annotation id 2 (image id 10): unknown category id 5"],
    ),
    "zero width box": (
        _set(("annotations", 0, "bbox"), [10, 20, 0, 40]),
        ["annotation id 1 (image id 10)", "zero"],
    ),
    "negative height box": (
        _set(("annotations", 0, "bbox"), [10, 20, 5, -4]),
        ["annotation id 1", "negative size"],
    ),
    "nan box": (_set(("annotations", 0, "bbox"), [math.nan, 20, 5, 4]), ["annotation id 1", "non-finite"]),
    "inf box": (
        _set(("annotations", 2, "bbox"), [1, 2, math.inf, 4]),
        ["annotation id 7 (image id 12)", "non-finite"],
    ),
    "box outside image": (
        _set(("annotations", 0, "bbox"), [300, 20, 30, 40]),
        ["annotation id 1 (image id 10): box [300, 20, 30, 40] extends outside the 320x256 image"],
    ),
    "box left of image": (_set(("annotations", 0, "bbox"), [-5, 20, 30, 40]), ["annotation id 1", "outside"]),
    "bbox not 4 numbers": (_set(("annotations", 0, "bbox"), [1, 2, 3]), ["annotation id 1", "'bbox'"]),
    "missing width": (_delete(("images", 0, "width")), ["image id 10 (a.png): missing 'width'"]),
    "missing height": (_delete(("images", 2, "height")), ["image id 12 (c.png): missing 'height'"]),
    "non-integer width": (
        _set(("images", 0, "width"), 10.5),
        ["image id 10 (a.png): 'width' must be a positive integer"],
    ),
    "empty dataset": (lambda d: d.update(images=[], annotations=[]), ["empty dataset: no images"]),
    "no categories": (lambda d: d.update(categories=[], annotations=[]), ["no categories"]),
    "image without id": (_delete(("images", 1, "id")), ["images[1]: missing or non-integer 'id'"]),
    "bad iscrowd": (_set(("annotations", 0, "iscrowd"), 2), ["annotation id 1", "'iscrowd' must be 0 or 1"]),
}


@pytest.mark.parametrize("case", INVALID_CASES, ids=list(INVALID_CASES))
def test_validation_error_names_file_and_record(tmp_path: Path, case: str) -> None:
    mutate, expected = INVALID_CASES[case]
    data = copy.deepcopy(coco_dict())
    mutate(data)
    path = write_json(tmp_path / "train.json", data)
    with pytest.raises(DataError) as info:
        load_coco(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text('{\n  "images": [\n    {"id": 1,,}\n  ]\n}')
    with pytest.raises(DataError, match=r"train\.json: malformed JSON at line 3, column 14"):
        load_coco(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.json: annotation file not found"):
        load_coco(tmp_path / "nope.json")


def test_all_problems_are_collected_and_capped(tmp_path: Path) -> None:
    data = coco_dict()
    data["annotations"] = [
        {"id": 100 + k, "image_id": 10, "category_id": 3, "bbox": [0, 0, -1, 5]}
        for k in range(MAX_LISTED + 5)
    ]
    with pytest.raises(DataError) as info:
        load_coco(write_json(tmp_path / "train.json", data))
    lines = str(info.value).splitlines()
    assert lines[0] == f"{tmp_path / 'train.json'}: {MAX_LISTED + 5} problems found"
    assert lines[1].startswith("  - annotation id 100 (image id 10): box [0, 0, -1, 5] has zero or negative")
    assert len(lines) == 1 + MAX_LISTED + 1 and lines[-1] == "  ... and 5 more"
