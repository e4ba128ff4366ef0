"""Offline hard-negative mining: false positives of hand-made predictions, the file, its validation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from hardmine.data.records import Category, DatasetIndex, ImageRecord
from hardmine.engine.mining import (
    MinedRegions,
    find_false_positives,
    load_hard_negatives,
    merge_mined,
    read_hard_negatives,
    write_hard_negatives,
)
from hardmine.errors import DataError


def _index() -> DatasetIndex:
    a = ImageRecord(
        image_id=10,
        file_name="a.png",
        width=100,
        height=80,
        boxes=np.array([[10, 10, 30, 30]], np.float32),
        labels=np.array([1]),
        ignore_boxes=np.array([[60, 0, 100, 40]], np.float32),
        ignore_labels=np.array([2]),
    )
    b = ImageRecord(image_id=20, file_name="b.png", width=50, height=50)
    c = ImageRecord(image_id=30, file_name="c.png", width=50, height=50)
    categories = [Category(id=7, name="cat", label=1), Category(id=9, name="dog", label=2)]
    return DatasetIndex([a, b, c], categories, image_root=Path("."), source=Path("hand-made.json"))


def _pred(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


PREDICTIONS = {
    10: _pred(
        [
            [10, 10, 30, 30],  # the object itself: a true positive
            [12, 10, 32, 30],  # IoU 0.82 with the object, other class: not a false positive (any class)
            [40, 40, 60, 60],  # nothing there: false positive
            [40, 40, 60, 60],  # the same, but scoring below 0.5
            [62, 2, 90, 30],  # on the ignore region
            [20, 20, 40, 40],  # IoU 100 / 700 = 0.14 < 0.3 with the object: false positive
            [0, 50, 20, 80],  # scores exactly 0.5: false positive
        ],
        [0.9, 0.8, 0.7, 0.4, 0.9, 0.6, 0.5],
        [1, 2, 2, 1, 1, 1, 1],
    ),
    20: _pred([[1, 1, 10, 10]], [0.95], [2]),  # an image without objects
    30: _pred([[1, 1, 10, 10]], [0.2], [1]),  # nothing above the threshold
}


def test_false_positives_of_a_hand_made_prediction_set():
    mined = find_false_positives(_index(), PREDICTIONS, score_thresh=0.5, iou_thresh=0.3)
    assert sorted(mined) == [10, 20]
    assert_close(mined[10].boxes, torch.tensor([[40.0, 40, 60, 60], [20, 20, 40, 40], [0, 50, 20, 80]]))
    assert_close(mined[10].scores, torch.tensor([0.7, 0.6, 0.5]))
    assert mined[10].labels.tolist() == [2, 1, 1]
    assert_close(mined[20].boxes, torch.tensor([[1.0, 1, 10, 10]]))


def test_the_file_holds_exactly_the_false_positives(tmp_path):
    index = _index()
    mined = find_false_positives(index, PREDICTIONS, score_thresh=0.5, iou_thresh=0.3)
    path = write_hard_negatives(
        tmp_path / "hn.json", index, mined, checkpoint="run/model_final.pt", score_thresh=0.5, iou_thresh=0.3
    )
    data = json.loads(path.read_text())
    assert {k: v for k, v in data.items() if k != "images"} == {
        "format": "hardmine-hard-negatives",
        "version": 1,
        "checkpoint": "run/model_final.pt",
        "dataset": "hand-made.json",
        "score_thresh": 0.5,
        "iou_thresh": 0.3,
        "num_images": 3,
        "num_regions": 4,
        "merged_with": None,
    }
    assert data["images"] == [
        {
            "image_id": 10,
            "file_name": "a.png",
            "boxes": [[40.0, 40.0, 60.0, 60.0], [20.0, 20.0, 40.0, 40.0], [0.0, 50.0, 20.0, 80.0]],
            "scores": [0.7, 0.6, 0.5],
            "category_ids": [9, 7, 7],  # the dataset's own ids
        },
        {
            "image_id": 20,
            "file_name": "b.png",
            "boxes": [[1.0, 1.0, 10.0, 10.0]],
            "scores": [0.95],
            "category_ids": [9],
        },
    ]
    back = read_hard_negatives(path, index)
    assert sorted(back) == [10, 20]
    assert_close(back[10].boxes, mined[10].boxes)
    assert back[10].labels.tolist() == [2, 1, 1]
    assert_close(load_hard_negatives(path, index)[20], torch.tensor([[1.0, 1, 10, 10]]))


def test_entries_may_name_the_image_by_file_name_only_and_boxes_are_clipped(tmp_path):
    path = tmp_path / "hn.json"
    path.write_text(json.dumps(_payload(images=[{"file_name": "b.png", "boxes": [[-5, 2, 70, 10]]}])))
    assert_close(load_hard_negatives(path, _index())[20], torch.tensor([[0.0, 2, 50, 10]]))


def _payload(**changes):
    payload = {
        "format": "hardmine-hard-negatives",
        "version": 1,
        "images": [{"image_id": 10, "file_name": "a.png", "boxes": [[1, 2, 3, 4]], "scores": [0.9]}],
    }
    payload.update(changes)
    return payload


def _entry(**changes):
    return _payload(images=[{**_payload()["images"][0], **changes}])


BAD_FILES = {
    "malformed JSON": ('{"format": ', "malformed JSON"),
    "no format tag": (json.dumps({"images": []}), "not a hardmine hard-negative file"),
    "other version": (json.dumps(_payload(version=2)), "version 2"),
    "images not a list": (json.dumps(_payload(images={})), "'images' must be a list"),
    "unknown image id": (json.dumps(_entry(image_id=99)), "images[0]: image id 99 is not in hand-made.json"),
    "other file name": (json.dumps(_entry(file_name="z.png")), "images[0]: image id 10 is 'a.png'"),
    "unknown file name": (
        json.dumps(_payload(images=[{"file_name": "z.png", "boxes": []}])),
        "images[0]: file name 'z.png' is not in",
    ),
    "no image key": (json.dumps(_payload(images=[{"boxes": []}])), "images[0]: has neither"),
    "short box": (json.dumps(_entry(boxes=[[1, 2, 3]])), "images[0]: 'boxes[0]' must be a list of 4 numbers"),
    "inverted box": (
        json.dumps(_entry(boxes=[[5, 2, 3, 4]])),
        "images[0]: boxes[0] = [5, 2, 3, 4] has x2 < x1",
    ),
    "non-finite": (
        '{"format": "hardmine-hard-negatives", "version": 1, "images": '
        '[{"image_id": 10, "boxes": [[1, 2, NaN, 4]]}]}',
        "finite numbers",
    ),
    "scores length": (json.dumps(_entry(scores=[0.9, 0.8])), "images[0]: 'scores' must be a list of 1"),
    "unknown category": (json.dumps(_entry(category_ids=[3])), "images[0]: category ids [3] are not"),
    "category not an id": (json.dumps(_entry(category_ids=[[7]])), "images[0]: category ids [[7]] are not"),
    "listed twice": (
        json.dumps(_payload(images=[_entry()["images"][0], {"file_name": "a.png", "boxes": []}])),
        "images[1]: image id 10 is listed twice",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_errors_naming_the_file_and_the_entry(tmp_path, case):
    text, message = BAD_FILES[case]
    path = tmp_path / "hn.json"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_hard_negatives(path, _index())
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"hard-negative file .*nope.json does not exist"):
        read_hard_negatives(tmp_path / "nope.json", _index())


def test_merging_keeps_the_best_of_overlapping_regions():
    a = {10: MinedRegions(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), torch.tensor([1]))}
    b = {
        10: MinedRegions(
            torch.tensor([[0.0, 0, 10, 11], [50, 50, 60, 60]]),
            torch.tensor([0.95, 0.6]),
            torch.tensor([2, 1]),
        ),
        20: MinedRegions(torch.tensor([[1.0, 1, 5, 5]]), torch.tensor([0.7]), torch.tensor([1])),
    }
    merged = merge_mined(a, b)
    assert sorted(merged) == [10, 20]
    assert_close(merged[10].boxes, torch.tensor([[0.0, 0, 10, 11], [50, 50, 60, 60]]))  # IoU 10/11 >= 0.7
    assert merged[10].labels.tolist() == [2, 1]
