"""Semantic masks: COCO polygons / RLE, VOC palette PNGs and the synthetic masks, each written,
read back and compared with a hand-made mask; the order rule, crowds, missing segmentations and the
errors of `load_mask`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faster_coco_eval.core.mask as mask_api
import numpy as np
import pytest
from PIL import Image

from hardmine.data import synthetic
from hardmine.data.coco import load_coco, write_coco
from hardmine.data.loading import load_dataset
from hardmine.data.masks import IGNORE_LABEL, load_mask, write_mask_png
from hardmine.data.records import MaskFile, Segments
from hardmine.data.voc import load_voc
from hardmine.errors import DataError

from .test_voc import make_voc, voc_xml

W, H = 8, 6
CAT, DOG = 1, 2  # labels of category ids 7 and 9


def coco_with_segments() -> dict[str, Any]:
    """One 8x6 image: a cat rectangle, a dog rectangle over part of it, a crowd column (RLE), a dog
    without segmentation; a second image without annotations."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 7,
                "bbox": [1, 1, 4, 3],
                "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 9,
                "bbox": [3, 2, 4, 3],
                "segmentation": [[3, 2, 7, 2, 7, 5, 3, 5]],
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 7,
                "bbox": [0, 0, 1, 6],
                "iscrowd": 1,
                "segmentation": {"size": [H, W], "counts": [0, H, H * W - H]},  # column 0, column-major runs
            },
            {"id": 13, "image_id": 1, "category_id": 9, "bbox": [6, 0, 1.5, 1]},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
    }


def expected_mask() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[1:4, 1:5] = CAT  # polygon corners on pixel edges: columns 1..4, rows 1..3
    mask[2:5, 3:7] = DOG  # the later annotation wins where they overlap
    mask[:, 0] = IGNORE_LABEL  # the crowd
    mask[0:1, 6:8] = IGNORE_LABEL  # no segmentation: every pixel its box [6, 7.5) x [0, 1) touches
    return mask


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_coco_polygons_rle_crowd_and_missing_segmentation(tmp_path: Path) -> None:
    index = load_coco(_write(tmp_path / "a.json", coco_with_segments()), masks=True)
    first, second = index.records
    np.testing.assert_array_equal(load_mask(first, index), expected_mask())
    np.testing.assert_array_equal(load_mask(second, index), np.zeros((H, W), np.uint8))
    assert isinstance(first.mask, Segments) and [s.annotation_id for s in first.mask.segments] == [
        10,
        11,
        12,
        13,
    ]
    assert load_mask(first, index).dtype == np.uint8


def test_overlaps_go_to_the_later_annotation(tmp_path: Path) -> None:
    data = coco_with_segments()
    data["annotations"] = [data["annotations"][1], data["annotations"][0]]  # dog first, then cat
    index = load_coco(_write(tmp_path / "a.json", data), masks=True)
    expected = np.zeros((H, W), np.uint8)
    expected[2:5, 3:7] = DOG
    expected[1:4, 1:5] = CAT
    np.testing.assert_array_equal(load_mask(index.records[0], index), expected)


def test_compressed_rle_reads_as_the_uncompressed_one(tmp_path: Path) -> None:
    column = np.zeros((H, W), np.uint8, order="F")
    column[:, 0] = 1
    counts = mask_api.encode(np.asfortranarray(column[..., None]))[0]["counts"].decode("ascii")
    data = coco_with_segments()
    data["annotations"][2]["segmentation"] = {"size": [H, W], "counts": counts}
    index = load_coco(_write(tmp_path / "a.json", data), masks=True)
    np.testing.assert_array_equal(load_mask(index.records[0], index), expected_mask())


def test_write_coco_keeps_the_masks(tmp_path: Path) -> None:
    index = load_coco(_write(tmp_path / "a.json", coco_with_segments()), masks=True)
    index.records[1].mask = MaskFile("masks/b.png")
    (tmp_path / "masks").mkdir()
    hand_made = np.full((H, W), DOG, np.uint8)
    write_mask_png(tmp_path / "masks" / "b.png", hand_made)
    write_coco(index, tmp_path / "copy.json")
    copy = load_coco(tmp_path / "copy.json", masks=True)
    np.testing.assert_array_equal(load_mask(copy.records[0], copy), expected_mask())
    np.testing.assert_array_equal(load_mask(copy.records[1], copy), hand_made)
    assert json.loads((tmp_path / "copy.json").read_text())["images"][1]["sem_seg_file_name"] == "masks/b.png"


def test_segmentations_are_not_read_without_masks(tmp_path: Path) -> None:
    data = coco_with_segments()
    data["annotations"][0]["segmentation"] = [[1, 2, 3]]  # malformed, but detection does not care
    index = load_coco(_write(tmp_path / "a.json", data))
    assert all(r.mask is None for r in index.records) and len(index.records[0].boxes) == 3
    with pytest.raises(DataError, match=r"image id 1 \(a.png\): no semantic mask"):
        load_mask(index.records[0], index)


def test_a_malformed_segmentation_is_an_error_naming_the_annotation(tmp_path: Path) -> None:
    data = coco_with_segments()
    data["annotations"][1]["segmentation"] = [[3, 2, 7, 2, 7]]
    with pytest.raises(
        DataError, match=r"annotation id 11 \(image id 1\): segmentation: polygon 0 has 5 coordinates"
    ):
        load_coco(_write(tmp_path / "a.json", data), masks=True)


def _palette_png(path: Path, mask: np.ndarray) -> None:
    """A VOC-style palette PNG (written without hardmine's writer): indices are the labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("P", (mask.shape[1], mask.shape[0]))
    image.putdata([int(v) for v in mask.ravel()])
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
    image.save(path)


def test_voc_segmentation_class_png(tmp_path: Path) -> None:
    files = {
        "a": voc_xml("a.jpg", (W, H), [("cat", 0, 2, 2, 4, 4)]),
        "b": voc_xml("b.jpg", (W, H), []),
    }
    root = make_voc(tmp_path / "VOC", files, ["a", "b"])
    hand_made = np.zeros((H, W), np.uint8)
    hand_made[1:4, 1:4] = CAT
    hand_made[0, :] = IGNORE_LABEL
    hand_made[5, 6:] = DOG
    _palette_png(root / "SegmentationClass" / "a.png", hand_made)
    index = load_voc(root, class_names=["cat", "dog"], masks=True)
    a, b = index.records
    assert a.mask == MaskFile("SegmentationClass/a.png") and b.mask is None
    with Image.open(root / a.mask.file_name) as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(load_mask(a, index), hand_made)
    with pytest.raises(DataError, match=r"image id 1 \(JPEGImages/b.jpg\): no semantic mask"):
        load_mask(b, index)
    # without masks nothing changes for detection
    assert all(r.mask is None for r in load_voc(root, class_names=["cat", "dog"]).records)


def test_voc_reads_the_segmentation_split_when_there_is_one(tmp_path: Path) -> None:
    files = {s: voc_xml(f"{s}.jpg", (W, H), []) for s in ("a", "b", "c")}
    root = make_voc(tmp_path / "VOC", files, ["a", "b", "c"])
    (root / "ImageSets" / "Segmentation").mkdir()
    (root / "ImageSets" / "Segmentation" / "trainval.txt").write_text("c\n")
    _palette_png(root / "SegmentationClass" / "c.png", np.zeros((H, W), np.uint8))
    index = load_dataset(root, class_names=["cat", "dog"], masks=True)
    assert [r.file_name for r in index.records] == ["JPEGImages/c.jpg"]
    assert index.source == root / "ImageSets" / "Segmentation" / "trainval.txt"
    assert len(load_dataset(root, class_names=["cat", "dog"]).records) == 3


def test_mask_png_round_trip_keeps_every_value(tmp_path: Path) -> None:
    mask = np.arange(256, dtype=np.uint8).reshape(16, 16)
    write_mask_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), mask)


def test_a_mask_file_of_another_size_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    data = coco_with_segments()
    data["images"][1]["sem_seg_file_name"] = "masks/b.png"
    (tmp_path / "masks").mkdir()
    write_mask_png(tmp_path / "masks" / "b.png", np.zeros((H, W + 1), np.uint8))
    index = load_coco(_write(tmp_path / "a.json", data), masks=True)
    with pytest.raises(
        DataError, match=r"masks/b.png: image id 2 \(b.png\): mask is 9x6 but the image is 8x6"
    ):
        load_mask(index.records[1], index)


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthetic.generate_synthetic(root, seed=3, num_train=4, num_val=2)
    return root


def test_synthetic_masks_read_back_exactly(synthetic_set: Path) -> None:
    index = load_coco(synthetic_set / "train.json", masks=True)
    for record in index.records:
        assert record.mask == MaskFile(f"masks/train_{record.image_id:06d}.png")
        _, _, rendered = synthetic._render_image(np.random.default_rng([3, 0, record.image_id]))
        np.testing.assert_array_equal(load_mask(record, index), rendered)


def test_synthetic_masks_agree_with_the_boxes(synthetic_set: Path) -> None:
    index = load_coco(synthetic_set / "train.json", masks=True)
    seen_ignore = False
    for record in index.records:
        mask = load_mask(record, index)
        for label in range(1, index.num_classes + 1):
            inside = np.zeros_like(mask, bool)
            for box in record.boxes[record.labels == label].astype(int):
                inside[box[1] : box[3], box[0] : box[2]] = True
                # an annotated object is at least half visible: its label is in its box
                assert (mask[box[1] : box[3], box[0] : box[2]] == label).any()
            assert not ((mask == label) & ~inside).any()  # labelled pixels lie in that class's boxes
        inside = np.zeros_like(mask, bool)
        for box in record.ignore_boxes.astype(int):
            inside[box[1] : box[3], box[0] : box[2]] = True
        assert not ((mask == IGNORE_LABEL) & ~inside).any()
        seen_ignore |= bool((mask == IGNORE_LABEL).any())
        assert set(np.unique(mask)) <= {0, IGNORE_LABEL, *range(1, index.num_classes + 1)}
    assert seen_ignore or all(len(r.ignore_boxes) == 0 for r in index.records)


def test_synthetic_json_names_the_mask_files(synthetic_set: Path) -> None:
    images = json.loads((synthetic_set / "val.json").read_text())["images"]
    assert [img["sem_seg_file_name"] for img in images] == ["masks/val_000000.png", "masks/val_000001.png"]
    assert synthetic.GENERATOR_VERSION == 2
