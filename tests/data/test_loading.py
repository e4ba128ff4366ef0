"""load_dataset picks the reader from the path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardmine.data.loading import load_dataset
from hardmine.errors import DataError

from .test_voc import default_files, make_voc


def test_json_file_is_read_as_coco(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
                "annotations": [],
                "categories": [{"id": 1, "name": "x"}],
            }
        )
    )
    index = load_dataset(str(path), image_root=str(tmp_path / "imgs"))
    assert index.image_root == tmp_path / "imgs" and index.class_names() == ["x"]


def test_directory_with_annotations_is_read_as_voc(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", default_files(), ["000005"], split_name="train")
    index = load_dataset(root, split="train", class_names=["dog", "person"])
    assert index.class_names() == ["dog", "person"] and len(index.records) == 1


def test_voc_split_defaults_to_trainval(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", default_files(), ["000005", "000007"])
    assert len(load_dataset(root).records) == 2


@pytest.mark.parametrize("name", ["missing.json", "notes.txt", "plain_dir"])
def test_other_paths_are_rejected(tmp_path: Path, name: str) -> None:
    if name == "notes.txt":
        (tmp_path / name).write_text("hello")
    elif name == "plain_dir":
        (tmp_path / name).mkdir()
    with pytest.raises(DataError, match=name):
        load_dataset(tmp_path / name)
