"""VOC reader: 1-based corners, difficult -> ignore, class names and validation messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardmine.data.voc import VOC_CLASSES, load_voc
from hardmine.errors import DataError


def voc_xml(filename: str | None, size: tuple[int, int] | None, objects: list[tuple]) -> str:
    """An annotation file; objects are (name, difficult, xmin, ymin, xmax, ymax)."""
    parts = ["<annotation>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, difficult, *box in objects:
        corners = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{corners}</bndbox></object>"
        )
    return "\n".join(parts + ["</annotation>"])


def make_voc(root: Path, files: dict[str, str], split: list[str], split_name: str = "trainval") -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for stem, text in files.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
    (root / "ImageSets" / "Main" / f"{split_name}.txt").write_text("".join(f"{s}\n" for s in split))
    return root


def default_files() -> dict[str, str]:
    return {
        "000005": voc_xml(
            "000005.jpg", (500, 375), [("dog", 0, 1, 1, 10, 20), ("person", 1, 100, 50, 200, 375)]
        ),
        "000007": voc_xml("000007.jpg", (320, 240), []),
        "000009": voc_xml(None, (64, 48), [("cat", 0, 5.5, 6, 64, 48)]),
    }


def test_reads_boxes_with_one_based_conversion(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", default_files(), ["000005", "000007", "000009"])
    index = load_voc(root)
    assert [r.image_id for r in index.records] == [0, 1, 2]
    first = index.records[0]
    assert first.file_name == "JPEGImages/000005.jpg" and (first.width, first.height) == (500, 375)
    np.testing.assert_array_equal(first.boxes, [[0, 0, 10, 20]])  # VOC (1, 1, 10, 20) -> (0, 0, 10, 20)
    np.testing.assert_array_equal(first.labels, [VOC_CLASSES.index("dog") + 1])
    assert index.image_root == root
    assert index.source == root / "ImageSets" / "Main" / "trainval.txt"


def test_difficult_objects_become_ignore_regions(tmp_path: Path) -> None:
    first = load_voc(make_voc(tmp_path / "VOC", default_files(), ["000005"])).records[0]
    np.testing.assert_array_equal(first.ignore_boxes, [[99, 49, 200, 375]])
    np.testing.assert_array_equal(first.ignore_labels, [VOC_CLASSES.index("person") + 1])
    np.testing.assert_array_equal(first.annotation_ids, [1, 2])


def test_images_without_objects_are_kept_and_filename_defaults(tmp_path: Path) -> None:
    index = load_voc(make_voc(tmp_path / "VOC", default_files(), ["000007", "000009"]))
    assert index.records[0].boxes.shape == (0, 4)
    assert index.records[1].file_name == "JPEGImages/000009.jpg"  # no <filename>: from the id
    np.testing.assert_array_equal(index.records[1].boxes, [[4.5, 5, 64, 48]])


def test_default_categories_are_the_twenty_voc_classes(tmp_path: Path) -> None:
    index = load_voc(make_voc(tmp_path / "VOC", default_files(), ["000005"]))
    assert index.class_names() == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert [(c.id, c.label) for c in index.categories] == [(k, k) for k in range(1, 21)]


def test_custom_class_names_and_split(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", default_files(), ["000009", "000005"], split_name="val")
    index = load_voc(root, split="val", class_names=["cat", "dog", "person"])
    assert index.class_names() == ["cat", "dog", "person"]
    np.testing.assert_array_equal(index.records[0].labels, [1])
    np.testing.assert_array_equal(index.records[1].labels, [2])
    np.testing.assert_array_equal(index.records[1].ignore_labels, [3])


BAD_FILES = {
    "unknown class": (
        voc_xml("a.jpg", (100, 100), [("dog", 0, 1, 1, 5, 5), ("dragon", 0, 1, 1, 5, 5)]),
        ["a.xml: object 1 (dragon): unknown class name 'dragon'; known classes: aeroplane, bicycle"],
    ),
    "malformed xml": ("<annotation><size></annotation>", ["a.xml: malformed XML", "line 1"]),
    "missing size": (voc_xml("a.jpg", None, []), ["a.xml: missing or invalid <size>"]),
    "zero size box": (
        voc_xml("a.jpg", (100, 100), [("dog", 0, 10, 10, 9, 20)]),
        ["a.xml: object 0 (dog)", "zero"],
    ),
    "box outside": (
        voc_xml("a.jpg", (100, 80), [("cat", 0, 5, 5, 103, 20)]),
        ["a.xml: object 0 (cat): box [xmin=5, ymin=5, xmax=103, ymax=20] extends outside the 100x80 image"],
    ),
    "non-numeric corner": (voc_xml("a.jpg", (100, 100), [("dog", 0, "x", 1, 5, 5)]), ["object 0", "bndbox"]),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_invalid_annotation_names_xml_file_and_object(tmp_path: Path, case: str) -> None:
    text, expected = BAD_FILES[case]
    root = make_voc(tmp_path / "VOC", {"a": text}, ["a"])
    with pytest.raises(DataError) as info:
        load_voc(root)
    message = str(info.value)
    assert str(root / "Annotations" / "a.xml") in message
    for part in expected:
        assert part in message


def test_missing_annotation_file(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", default_files(), ["000005", "000404"])
    with pytest.raises(DataError, match=r"000404\.xml: annotation file not found"):
        load_voc(root)


def test_missing_split_file_lists_the_splits_found(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", default_files(), ["000005"])
    with pytest.raises(DataError, match=r"Main/test\.txt: split file not found; splits found: trainval"):
        load_voc(root, split="test")


def test_empty_split(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", default_files(), [])
    with pytest.raises(DataError, match=r"trainval\.txt: empty split"):
        load_voc(root)


def test_duplicate_class_names_rejected(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", default_files(), ["000005"])
    with pytest.raises(DataError, match="without duplicates"):
        load_voc(root, class_names=["dog", "dog"])
