"""`hardmine data check` and the check training runs first: a corpus of small malformed datasets,
each with the error or warning it must produce (naming the file and the record), the report, the
exit status and the stop / skip policies."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hardmine.cli import main
from hardmine.config import IMAGE_CHECKS, load_config
from hardmine.data import check as check_module
from hardmine.data.check import (
    check_dataset,
    check_pair,
    format_report,
    without_invalid,
)
from hardmine.data.masks import write_mask_png
from hardmine.data.problems import DATASET, ERROR, IMAGE, WARNING, Problem
from hardmine.data.sources import load_checked_splits
from hardmine.errors import DataError

from .test_voc import make_voc, voc_xml

W, H = 32, 24


def _png(path: Path, width: int = W, height: int = H) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(width * height * 3) % 251).astype(np.uint8).reshape(height, width, 3)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def coco_data() -> dict[str, Any]:
    """Three 32x24 images, two categories, four boxes: valid as it is."""
    return {
        "images": [{"id": i, "file_name": f"img/{i}.png", "width": W, "height": H} for i in (1, 2, 3)],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 8]},
            {"id": 11, "image_id": 1, "category_id": 9, "bbox": [12, 4, 6, 6]},
            {"id": 12, "image_id": 2, "category_id": 9, "bbox": [0, 0, 32, 24]},
            {"id": 13, "image_id": 3, "category_id": 7, "bbox": [5, 5, 5, 5]},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
    }


Build = Callable[[Path], dict[str, Any]]


def coco(mutate: Callable[[dict[str, Any], Path], None] | None = None, raw: str | None = None) -> Build:
    """A builder: the valid COCO set under ROOT (images in ROOT/img), changed by `mutate(data, root)`,
    or with `raw` as the whole annotation file."""

    def build(root: Path) -> dict[str, Any]:
        for i in (1, 2, 3):
            _png(root / "img" / f"{i}.png")
        data = coco_data()
        if mutate is not None:
            mutate(data, root)
        path = root / "train.json"
        path.write_text(raw if raw is not None else json.dumps(data))
        return {"path": path}

    return build


def voc(
    files: dict[str, str],
    split: list[str],
    split_name: str = "trainval",
    masks: dict[str, np.ndarray] | None = None,
) -> Build:
    """A builder: a VOC root with these XML files and split, a 32x24 JPEG for every listed id, and
    `SegmentationClass/<id>.png` for each of `masks`."""

    def build(root: Path) -> dict[str, Any]:
        voc_root = make_voc(root / "VOC", files, split, split_name)
        for stem in split:
            (voc_root / "JPEGImages").mkdir(exist_ok=True)
            Image.new("RGB", (W, H), (90, 120, 200)).save(voc_root / "JPEGImages" / f"{stem}.jpg")
        for stem, mask in (masks or {}).items():
            (voc_root / "SegmentationClass").mkdir(exist_ok=True)
            write_mask_png(voc_root / "SegmentationClass" / f"{stem}.png", mask)
        return {"path": voc_root, "class_names": ["cat", "dog"]}

    return build


def _set_image(key: str, value: Any, pos: int = 0) -> Callable[[dict, Path], None]:
    return lambda data, root: data["images"][pos].update({key: value})


def _set_bbox(bbox: list[float], pos: int = 0) -> Callable[[dict, Path], None]:
    return lambda data, root: data["annotations"][pos].update(bbox=bbox)


def _write_image(name: str, content: Callable[[Path], bytes]) -> Callable[[dict, Path], None]:
    def mutate(data: dict, root: Path) -> None:
        (root / "img" / name).write_bytes(content(root / "img" / name))

    return mutate


def _truncated_png(path: Path) -> bytes:
    data = _png(path, 64, 48)
    return data[: len(data) // 2]


def _rotated_jpeg(path: Path) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.new("RGB", (W, H), (10, 200, 30)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def _rename_file(data: dict, root: Path) -> None:
    data["images"][0]["file_name"] = "img/rotated.jpg"
    (root / "img" / "rotated.jpg").write_bytes(_rotated_jpeg(root / "img" / "rotated.jpg"))


def _segmentation(value: Any, pos: int = 0) -> Callable[[dict, Path], None]:
    return lambda data, root: data["annotations"][pos].update(segmentation=value)


def _mask_file(mask: np.ndarray | None, mode: str = "P") -> Callable[[dict, Path], None]:
    """Image 1's `sem_seg_file_name` is masks/1.png: `mask` written there (none: no file), as a
    label PNG or, with mode RGB, as a colour image."""

    def mutate(data: dict, root: Path) -> None:
        data["images"][0]["sem_seg_file_name"] = "masks/1.png"
        if mask is None:
            return
        (root / "masks").mkdir(exist_ok=True)
        if mode == "RGB":
            Image.fromarray(np.stack([mask] * 3, axis=-1)).save(root / "masks" / "1.png")
        else:
            write_mask_png(root / "masks" / "1.png", mask)

    return mutate


def _labels(*values: int, width: int = W) -> np.ndarray:
    """A 32x24 (or `width`x24) mask with `values` in its first pixels, 0 elsewhere."""
    mask = np.zeros((H, width), np.uint8)
    mask.ravel()[: len(values)] = values
    return mask


def _no_boxes(data: dict, root: Path) -> None:
    data["annotations"] = []


def _one_category_unused(data: dict, root: Path) -> None:
    data["categories"].append({"id": 11, "name": "bird"})


def _same_file_twice(data: dict, root: Path) -> None:
    data["images"][2]["file_name"] = "img/1.png"


#: name -> (builder, check options, expected [(severity, kind, record or file part, message part)])
CORPUS: dict[str, tuple[Build, dict[str, Any], list[tuple[str, str, str, str]]]] = {
    # the annotation file as a whole
    "malformed json": (
        coco(raw='{"images": [{"id": 1,,}]}'),
        {},
        [(ERROR, "file", "", "malformed JSON at line 1")],
    ),
    "json is a list": (coco(raw="[1, 2]"), {}, [(ERROR, "file", "", "expected a JSON object")]),
    "missing top-level key": (
        coco(lambda d, r: d.pop("annotations")),
        {},
        [(ERROR, "file", "", "missing top-level key(s) annotations")],
    ),
    "empty dataset": (
        coco(lambda d, r: d.update(images=[], annotations=[])),
        {},
        [(ERROR, "empty-dataset", "", "empty dataset: no images")],
    ),
    "no categories": (
        coco(lambda d, r: d.update(categories=[], annotations=[])),
        {},
        [(ERROR, "empty-dataset", "", "no categories")],
    ),
    # image records
    "duplicate image id": (
        coco(lambda d, r: d["images"].append({"id": 1, "file_name": "img/2.png", "width": W, "height": H})),
        {},
        [(ERROR, "duplicate-id", "image id 1", "duplicate id (images[0] and images[3])")],
    ),
    "image without width": (
        coco(lambda d, r: d["images"][1].pop("width")),
        {},
        [(ERROR, "image-record", "image id 2 (img/2.png)", "missing 'width'")],
    ),
    # annotations
    "duplicate annotation id": (
        coco(lambda d, r: d["annotations"][1].update(id=10)),
        {},
        [(ERROR, "duplicate-id", "annotation id 10", "duplicate id (annotations[0] and annotations[1])")],
    ),
    "unknown category id": (
        coco(lambda d, r: d["annotations"][2].update(category_id=3)),
        {},
        [(ERROR, "unknown-id", "annotation id 12 (image id 2)", "unknown category id 3")],
    ),
    "unknown image id": (
        coco(lambda d, r: d["annotations"][3].update(image_id=42)),
        {},
        [(ERROR, "unknown-id", "annotation id 13 (image id 42)", "unknown image id 42")],
    ),
    "nan box": (
        coco(_set_bbox([math.nan, 2, 10, 8])),
        {},
        [(ERROR, "box", "annotation id 10 (image id 1)", "non-finite coordinate")],
    ),
    "zero-width box": (
        coco(_set_bbox([4, 2, 0, 8], pos=1)),
        {},
        [(ERROR, "box", "annotation id 11 (image id 1)", "zero or negative size")],
    ),
    "box outside the image": (
        coco(_set_bbox([30, 2, 10, 8])),
        {},
        [(ERROR, "box", "annotation id 10 (image id 1)", "extends outside the 32x24 image")],
    ),
    "bbox of three numbers": (
        coco(_set_bbox([1, 2, 3])),
        {},
        [(ERROR, "box", "annotation id 10", "'bbox' must be a list of 4 numbers")],
    ),
    # image files
    "missing image file": (
        coco(lambda d, r: (r / "img" / "2.png").unlink()),
        {},
        [(ERROR, "image-missing", "img/2.png", "image file not found")],
    ),
    "corrupt image file": (
        coco(_write_image("3.png", lambda p: b"this is not a png")),
        {},
        [(ERROR, "image-unreadable", "img/3.png", "cannot read image")],
    ),
    "truncated image (decode)": (
        coco(
            lambda d, r: [
                _write_image("2.png", _truncated_png)(d, r),
                d["images"][1].update(width=64, height=48),
            ]
        ),
        {"images": "decode"},
        [(ERROR, "image-unreadable", "img/2.png", "truncated")],
    ),
    "image size differs": (
        coco(_set_image("width", 40, pos=2)),
        {},
        [(ERROR, "image-size", "img/3.png", "image is 32x24 but the annotations say 40x24")],
    ),
    # warnings
    "no boxes at all": (
        coco(_no_boxes),
        {},
        [(WARNING, "no-annotations", "", "no boxes in any of the 3 images")],
    ),
    "unused category": (
        coco(_one_category_unused),
        {},
        [(WARNING, "unused-category", "category id 11 (bird)", "no boxes of this category")],
    ),
    "tiny box": (
        coco(_set_bbox([3, 3, 0.5, 4], pos=1)),
        {},
        [
            (
                WARNING,
                "tiny-box",
                "annotation id 11 (image id 1)",
                "(x1, y1, x2, y2) = (3, 3, 3.5, 7) is 0.5x4 px, under 1 pixel",
            )
        ],
    ),
    "two records, one file": (
        coco(_same_file_twice),
        {},
        [(WARNING, "duplicate-file", "image id 3 (img/1.png)", "same image file as image id 1")],
    ),
    "exif rotation": (
        coco(_rename_file),
        {},
        [(WARNING, "exif-rotation", "rotated.jpg", "EXIF orientation 6")],
    ),
    # VOC
    "voc malformed xml": (
        voc({"a": "<annotation><size></annotation>", "b": voc_xml("b.jpg", (W, H), [])}, ["a", "b"]),
        {},
        [(ERROR, "malformed-file", "a.xml", "malformed XML")],
    ),
    "voc missing xml": (
        voc({"a": voc_xml("a.jpg", (W, H), [("cat", 0, 1, 1, 5, 5)])}, ["a", "gone"]),
        {},
        [(ERROR, "annotation-file", "gone.xml", "annotation file not found")],
    ),
    "voc unknown class": (
        voc({"a": voc_xml("a.jpg", (W, H), [("cat", 0, 1, 1, 5, 5), ("dragon", 0, 1, 1, 5, 5)])}, ["a"]),
        {},
        [(ERROR, "unknown-id", "object 1 (dragon)", "unknown class name 'dragon'")],
    ),
    "voc missing size": (
        voc({"a": voc_xml("a.jpg", None, [])}, ["a"]),
        {},
        [(ERROR, "image-record", "a.xml", "missing or invalid <size>")],
    ),
    "voc box outside": (
        voc({"a": voc_xml("a.jpg", (W, H), [("dog", 0, 5, 5, 40, 20)])}, ["a"]),
        {},
        [(ERROR, "box", "object 0 (dog)", "extends outside the 32x24 image")],
    ),
    "voc size differs from image": (
        voc({"a": voc_xml("a.jpg", (W + 1, H), [("dog", 0, 5, 5, 10, 20)])}, ["a"]),
        {},
        [(ERROR, "image-size", "a.jpg", "image is 32x24 but the annotations say 33x24")],
    ),
    "voc missing split": (
        voc({"a": voc_xml("a.jpg", (W, H), [])}, ["a"], split_name="val"),
        {},
        [(ERROR, "file", "", "split file not found; splits found: val")],
    ),
    # semantic masks (checked with masks=True)
    "mask of another size": (
        coco(_mask_file(_labels(1, width=W + 2))),
        {"masks": True},
        [(ERROR, "mask-size", "masks/1.png", "mask is 34x24 but the image is 32x24")],
    ),
    "mask values out of range": (
        coco(_mask_file(_labels(1, 2, 3, 255, 200))),
        {"masks": True},
        [
            (
                ERROR,
                "mask-values",
                "image id 1 (img/1.png)",
                "mask values 3, 200 are neither a label 0..2 nor 255",
            )
        ],
    ),
    "mask file missing": (
        coco(_mask_file(None)),
        {"masks": True},
        [(ERROR, "mask-missing", "masks/1.png", "mask file not found")],
    ),
    "mask in colour": (
        coco(_mask_file(_labels(1), mode="RGB")),
        {"masks": True},
        [(ERROR, "mask-format", "masks/1.png", "mask mode is RGB; a label mask is a single-channel PNG")],
    ),
    "polygon with an odd number of coordinates": (
        coco(_segmentation([[1, 2, 11, 2, 11, 10, 1]])),
        {"masks": True},
        [
            (
                ERROR,
                "segmentation",
                "annotation id 10 (image id 1)",
                "polygon 0 has 7 coordinates, an odd number",
            )
        ],
    ),
    "polygon of two points": (
        coco(_segmentation([[1, 2, 11, 2, 11, 10], [1, 2, 11, 10]])),
        {"masks": True},
        [(ERROR, "segmentation", "annotation id 10", "polygon 1 has 2 point(s); a polygon needs at least 3")],
    ),
    "polygon with a non-number": (
        coco(_segmentation([[1, 2, "11", 2, 11, 10]])),
        {"masks": True},
        [
            (
                ERROR,
                "segmentation",
                "annotation id 10",
                "polygon 0 has a coordinate that is not a finite number: '11'",
            )
        ],
    ),
    "polygon not nested": (
        coco(_segmentation([1, 2, 11, 2, 11, 10])),
        {"masks": True},
        [(ERROR, "segmentation", "annotation id 10", "polygons must be a non-empty list of lists")],
    ),
    "rle counts short of the image": (
        coco(_segmentation({"size": [H, W], "counts": [5, 5]}, pos=1)),
        {"masks": True},
        [(ERROR, "segmentation", "annotation id 11", "RLE counts cover 10 pixels, the 32x24 image has 768")],
    ),
    "rle negative count": (
        coco(_segmentation({"size": [H, W], "counts": [770, -2]}, pos=1)),
        {"masks": True},
        [(ERROR, "segmentation", "annotation id 11", "RLE counts must be non-negative integers, got -2")],
    ),
    "rle of another size": (
        coco(_segmentation({"size": [20, W], "counts": [640]}, pos=2)),
        {"masks": True},
        [
            (
                ERROR,
                "segmentation",
                "annotation id 12",
                "RLE size [h, w] = [20, 32] differs from the image's [24, 32]",
            )
        ],
    ),
    "rle malformed string": (
        coco(_segmentation({"size": [H, W], "counts": "zzzz"}, pos=3)),
        {"masks": True},
        [(ERROR, "segmentation", "annotation id 13 (image id 3)", "malformed RLE counts")],
    ),
    "segmentation of another type": (
        coco(_segmentation(5)),
        {"masks": True},
        [
            (
                ERROR,
                "segmentation",
                "annotation id 10",
                "'segmentation' must be polygons (a list of lists) or RLE",
            )
        ],
    ),
    "annotations without segmentation": (
        coco(),
        {"masks": True},
        [(WARNING, "no-segmentation", "", "4 annotation(s) have no segmentation (first: annotation id 10)")],
    ),
    "voc mask of another size": (
        voc({"a": voc_xml("a.jpg", (W, H), [])}, ["a"], masks={"a": np.zeros((H + 1, W), np.uint8)}),
        {"masks": True},
        [(ERROR, "mask-size", "SegmentationClass/a.png", "mask is 32x25 but the image is 32x24")],
    ),
    "voc mask values out of range": (
        voc({"a": voc_xml("a.jpg", (W, H), [])}, ["a"], masks={"a": _labels(0, 15, 255)}),
        {"masks": True},
        [
            (
                ERROR,
                "mask-values",
                "SegmentationClass/a.png",
                "mask values 15 are neither a label 0..2 nor 255",
            )
        ],
    ),
    "voc image without a mask": (
        voc({s: voc_xml(f"{s}.jpg", (W, H), []) for s in "ab"}, ["a", "b"], masks={"a": _labels(1)}),
        {"masks": True},
        [(WARNING, "no-mask", "", "1 of 2 images have no SegmentationClass/<id>.png (first: b)")],
    ),
}


def _describe(problems: list[Problem]) -> str:
    return "\n".join(f"{p.severity} {p.kind} {p.file} | {p.record} | {p.message}" for p in problems)


@pytest.mark.parametrize("case", CORPUS, ids=list(CORPUS))
def test_corpus_case_is_reported_with_file_and_record(tmp_path: Path, case: str) -> None:
    build, options, expected = CORPUS[case]
    result = check_dataset(**build(tmp_path), **options)
    for severity, kind, where, message in expected:
        matches = [
            p
            for p in result.problems
            if p.severity == severity and p.kind == kind and message in p.message and where in p.describe()
        ]
        assert matches, f"expected {severity} {kind} '{where}' '{message}' in:\n{_describe(result.problems)}"
        assert matches[0].file or str(result.path) in matches[0].message  # the file is always named
    # exactly the expected errors: nothing else is wrong with these datasets
    assert len(result.errors) == sum(1 for e in expected if e[0] == ERROR), _describe(result.problems)


def test_the_corpus_is_large_enough_and_the_base_dataset_is_clean(tmp_path: Path) -> None:
    assert len(CORPUS) >= 15
    result = check_dataset(**coco()(tmp_path / "coco"), images="decode")
    assert result.problems == [] and result.index is not None and len(result.index.records) == 3
    result = check_dataset(
        **voc({"a": voc_xml("a.jpg", (W, H), [("cat", 0, 1, 1, 5, 5), ("dog", 0, 2, 2, 9, 9)])}, ["a"])(
            tmp_path / "voc"
        )
    )
    assert result.problems == []


def test_every_problem_is_collected_not_only_the_first(tmp_path: Path) -> None:
    def many(data: dict, root: Path) -> None:
        data["annotations"][0]["bbox"] = [math.inf, 0, 1, 1]
        data["annotations"][1]["category_id"] = 5
        data["images"][2]["width"] = 99
        (root / "img" / "2.png").unlink()

    result = check_dataset(**coco(many)(tmp_path))
    assert sorted(p.kind for p in result.errors) == ["box", "image-missing", "image-size", "unknown-id"]


def test_header_check_misses_truncation_that_decode_finds(tmp_path: Path) -> None:
    build, _, _ = CORPUS["truncated image (decode)"]
    path = build(tmp_path)["path"]
    assert check_dataset(path, images="header").errors == []
    assert [p.kind for p in check_dataset(path, images="decode").errors] == ["image-unreadable"]
    assert check_dataset(path, images="none").errors == []


def test_image_checks_in_threads_give_the_same_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(data: dict, root: Path) -> None:
        (root / "img" / "2.png").unlink()
        data["images"][2]["height"] = 25

    path = coco(broken)(tmp_path)["path"]
    serial = check_dataset(path, workers=1).problems
    monkeypatch.setattr(check_module, "_PARALLEL_FROM", 1)
    assert check_dataset(path, workers=4).problems == serial and len(serial) == 2


def test_config_choices_match_the_checker() -> None:
    assert IMAGE_CHECKS == check_module.IMAGE_CHECKS
    with pytest.raises(ValueError, match="images must be one of"):
        check_dataset("x.json", images="pixels")


def test_train_and_val_with_different_categories(tmp_path: Path) -> None:
    train = check_dataset(**coco()(tmp_path / "a"))
    val = check_dataset(**coco(lambda d, r: d["categories"][1].update(name="wolf"))(tmp_path / "b"))
    (problem,) = check_pair(train, val)
    assert problem.severity == ERROR and problem.kind == "split-categories" and problem.scope == DATASET
    assert "only in train [(9, 'dog')], only in val [(9, 'wolf')]" in problem.message


def test_images_in_both_train_and_val_are_a_warning(tmp_path: Path) -> None:
    train = check_dataset(**coco()(tmp_path))
    val = check_dataset(**coco()(tmp_path))  # the same images
    (problem,) = check_pair(train, val)
    assert problem.severity == WARNING and problem.kind == "train-val-overlap"
    assert problem.message.startswith("3 image file(s) are in both")


def test_skipping_drops_bad_images_with_their_boxes_and_bad_annotations(tmp_path: Path) -> None:
    def broken(data: dict, root: Path) -> None:
        data["annotations"][0]["bbox"] = [math.nan, 0, 1, 1]  # image 1 keeps its other box
        (root / "img" / "2.png").unlink()  # image 2 goes, with its box
        data["images"].append({"id": 4, "file_name": "img/4.png", "width": W})  # no height: never built

    result = check_dataset(**coco(broken)(tmp_path))
    index, counts = without_invalid(result)
    assert [r.image_id for r in index.records] == [1, 3]
    assert [len(r.boxes) for r in index.records] == [1, 1]
    assert (counts.images, counts.boxes_on_dropped_images, counts.annotations) == (2, 1, 1)
    assert counts.describe() == "dropped 2 image(s) (with 1 boxes) and 1 invalid annotation(s); 2 images kept"


def test_masks_are_checked_only_when_asked(tmp_path: Path) -> None:
    path = coco(_segmentation([[1, 2, 3]]))(tmp_path)["path"]
    assert check_dataset(path).problems == []  # detection does not read segmentations
    assert [p.kind for p in check_dataset(path, masks=True).errors] == ["segmentation"]
    assert [p.kind for p in check_dataset(path, masks=True, images="none").errors] == ["segmentation"]


def test_a_mask_problem_makes_skipping_drop_its_image(tmp_path: Path) -> None:
    def broken(data: dict, root: Path) -> None:
        _segmentation([[1, 2, 3, 4]], pos=3)(data, root)  # image 3
        _mask_file(_labels(9))(data, root)  # image 1

    result = check_dataset(**coco(broken)(tmp_path), masks=True)
    assert all(p.scope == IMAGE for p in result.errors)
    index, counts = without_invalid(result)
    assert [r.image_id for r in index.records] == [2] and counts.images == 2
    assert result.summary().endswith("2 categories, 3 semantic masks")


def test_mask_checks_in_threads_give_the_same_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = coco(_mask_file(_labels(7)))(tmp_path)["path"]
    serial = check_dataset(path, masks=True, workers=1).problems
    monkeypatch.setattr(check_module, "_PARALLEL_FROM", 1)
    assert check_dataset(path, masks=True, workers=4).problems == serial
    assert [p.kind for p in serial if p.is_error] == ["mask-values"]


def test_dataset_level_errors_cannot_be_skipped(tmp_path: Path) -> None:
    result = check_dataset(**coco(raw="{")(tmp_path))
    assert result.index is None and result.fatal
    with pytest.raises(ValueError, match="cannot be used by skipping"):
        without_invalid(result)


def test_report_lists_errors_before_warnings_and_counts_kinds(tmp_path: Path) -> None:
    def mixed(data: dict, root: Path) -> None:
        data["categories"].append({"id": 11, "name": "bird"})
        data["annotations"][1]["bbox"] = [12, 4, 60, 6]

    train = check_dataset(**coco(mixed)(tmp_path))
    text = format_report([train], [])
    lines = text.splitlines()
    assert lines[0] == f"{train.path}: COCO, 3 images, 3 boxes, 0 ignore regions, 3 categories"
    assert lines[1].startswith("  error: annotation id 11 (image id 1): box [12, 4, 60, 6] extends outside")
    assert lines[2] == "  warning: category id 11 (bird): no boxes of this category"
    assert lines[-1] == "1 error(s), 1 warning(s); errors: box 1; warnings: unused-category 1"
    capped = format_report([train], [], max_listed=1).splitlines()
    assert capped[2] == "  ... and 1 more (--max-listed 0 lists all)"


def test_cli_exit_status_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = coco()(tmp_path / "good")["path"]
    assert main(["data", "check", str(good), "--val", str(good)]) == 0
    out = capsys.readouterr().out
    assert "train vs val:" in out and "0 error(s), 1 warning(s); warnings: train-val-overlap 1" in out

    bad = coco(lambda d, r: (r / "img" / "1.png").unlink())(tmp_path / "bad")["path"]
    assert main(["data", "check", str(bad), "--images", "header"]) == 1
    out = capsys.readouterr().out
    assert f"  error: {tmp_path / 'bad' / 'img' / '1.png'}: image id 1: image file not found" in out

    root = voc({"a": voc_xml("a.jpg", (W, H), [("owl", 0, 1, 1, 5, 5)])}, ["a"])(tmp_path / "v")["path"]
    assert main(["data", "check", str(root), "--class-names", "cat,dog"]) == 1
    assert "object 0 (owl): unknown class name 'owl'; known classes: cat, dog" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "nowhere.json")]) == 1
    assert "dataset path does not exist" in capsys.readouterr().out

    odd = coco(_segmentation([[1, 2, 11, 2, 11]]))(tmp_path / "odd")["path"]
    assert main(["data", "check", str(odd)]) == 0  # masks are checked only with --masks
    capsys.readouterr()
    assert main(["data", "check", str(odd), "--masks"]) == 1
    out = capsys.readouterr().out
    assert "  error: annotation id 10 (image id 1): segmentation: polygon 0 has 5 coordinates" in out


def _config(train: Path, val: Path, *overrides: str):
    return load_config(None, [f"data.train={train}", f"data.val={val}", *overrides])


def test_training_check_stops_with_every_error_by_default(tmp_path: Path) -> None:
    def broken(data: dict, root: Path) -> None:
        data["annotations"][0]["bbox"] = [math.nan, 0, 1, 1]
        (root / "img" / "2.png").unlink()

    train = coco(broken)(tmp_path / "t")["path"]
    val = coco()(tmp_path / "v")["path"]
    with pytest.raises(DataError) as info:
        load_checked_splits(_config(train, val).data)
    lines = str(info.value).splitlines()
    assert lines[0] == f"data.train {train}: 2 error(s)"
    assert lines[1] == "  - annotation id 10 (image id 1): box [nan, 0, 1, 1] has a non-finite coordinate"
    assert lines[2] == f"  - {tmp_path / 't' / 'img' / '2.png'}: image id 2: image file not found"
    assert lines[3].startswith("(data.on_invalid=stop; `hardmine data check PATH` reports every problem")


def test_training_check_skips_under_skip_and_says_what_it_dropped(tmp_path: Path) -> None:
    train = coco(lambda d, r: (r / "img" / "2.png").unlink())(tmp_path / "t")["path"]
    val = coco(_set_bbox([3, 3, 0.5, 4]))(tmp_path / "v")["path"]
    said: list[str] = []
    train_index, val_index = load_checked_splits(
        _config(train, val, "data.on_invalid=skip").data, say=said.append
    )
    assert [r.image_id for r in train_index.records] == [1, 3] and len(val_index.records) == 3
    text = "\n".join(said)
    assert f"data.train {train}: data.on_invalid=skip dropped 1 image(s) (with 1 boxes)" in text
    assert f"data.val {val}: 1 warning(s)\n  - annotation id 10 (image id 1): box" in text
    # categories that differ between the splits stop training under either policy
    val_extra = coco(_one_category_unused)(tmp_path / "w")["path"]
    with pytest.raises(DataError, match="data.train vs data.val: 1 error"):
        load_checked_splits(_config(train, val_extra, "data.on_invalid=skip", "data.check_images=none").data)


def test_fatal_errors_stop_training_even_under_skip(tmp_path: Path) -> None:
    train = coco(raw='{"images": []')(tmp_path / "t")["path"]
    val = coco()(tmp_path / "v")["path"]
    with pytest.raises(DataError, match=r"malformed JSON"):
        load_checked_splits(_config(train, val, "data.on_invalid=skip").data)
    every_image_missing = coco(lambda d, r: [(r / "img" / f"{i}.png").unlink() for i in (1, 2, 3)])
    train = every_image_missing(tmp_path / "e")["path"]
    with pytest.raises(DataError, match="skip left no valid image in data.train"):
        load_checked_splits(_config(train, val, "data.on_invalid=skip").data)


def test_problem_scope_of_image_errors_is_the_image(tmp_path: Path) -> None:
    result = check_dataset(**coco(lambda d, r: (r / "img" / "3.png").unlink())(tmp_path))
    (problem,) = result.errors
    assert problem.scope == IMAGE and problem.image_id == 3


def test_eval_and_predict_see_the_split_training_used(tmp_path: Path) -> None:
    from hardmine.data.sources import resolve_split

    train = coco()(tmp_path / "t")["path"]
    val = coco(lambda d, r: d["annotations"][2].update(category_id=3))(tmp_path / "v")["path"]
    with pytest.raises(DataError, match="unknown category id 3"):
        resolve_split(_config(train, val).data, "val")
    said: list[str] = []
    index = resolve_split(_config(train, val, "data.on_invalid=skip").data, "val", say=said.append)
    assert [len(r.boxes) for r in index.records] == [2, 0, 1]
    (line,) = said
    assert line == f"data.val {val}: data.on_invalid=skip " + (
        "dropped 0 image(s) (with 0 boxes) and 1 invalid annotation(s); 3 images kept"
    )
