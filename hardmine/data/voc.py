"""Read Pascal VOC style datasets (the VOCdevkit layout) into a validated `DatasetIndex`.

Layout under `root`: `Annotations/<id>.xml`, `JPEGImages/<file>` (named by the XML's `<filename>`),
`ImageSets/Main/<split>.txt` (one image id per line). Read with masks, also
`SegmentationClass/<id>.png` (palette PNGs: the palette index is the label, 255 the border to
ignore) and, when it exists, the split list `ImageSets/Segmentation/<split>.txt`.

VOC corners are 1-based and inclusive: a box covering the first pixel column is xmin=1, xmax=1.
hardmine boxes are 0-based with an exclusive far edge, so (xmin, ymin, xmax, ymax) becomes
(xmin - 1, ymin - 1, xmax, ymax); the same pixel column is then x in [0, 1).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hardmine.data.coco import check_box, stack_boxes
from hardmine.data.problems import ANNOTATION, IMAGE, ProblemLog
from hardmine.data.records import Category, DatasetIndex, ImageRecord, MaskFile
from hardmine.errors import DataError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


#: Folder of the semantic masks, one `<id>.png` per image.
MASK_FOLDER = "SegmentationClass"


def _read_split(root: Path, split: str, masks: bool = False) -> tuple[Path, list[str]]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    segmentation_split = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if masks and segmentation_split.is_file():
        split_file = segmentation_split
    if not split_file.is_file():
        found = sorted(p.stem for p in split_file.parent.glob("*.txt")) if split_file.parent.is_dir() else []
        hint = f"; splits found: {', '.join(found)}" if found else ""
        raise DataError(f"{split_file}: split file not found{hint}")
    # the first token of each line is the id (class-specific split files add a +1/-1 column)
    try:
        text = split_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{split_file}: cannot read split file: {exc}") from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{split_file}: empty split, no image ids listed")
    return split_file, ids


def _text(node: ET.Element, path: str) -> str | None:
    found = node.find(path)
    return found.text.strip() if found is not None and found.text is not None else None


def _number(node: ET.Element, path: str) -> float | None:
    text = _text(node, path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _parse_objects(
    root_node: ET.Element,
    xml_file: Path,
    image_id: int,
    width: int,
    height: int,
    name_to_label: dict[str, int],
    log: ProblemLog,
) -> tuple[list, list, list, list]:
    """Boxes and labels of the objects, then of the `difficult` objects (ignore regions)."""
    boxes, labels, ignore_boxes, ignore_labels = [], [], [], []
    for pos, obj in enumerate(root_node.findall("object")):
        name = _text(obj, "name")
        at = {"file": str(xml_file), "record": f"object {pos} ({name})", "image_id": image_id}
        if name not in name_to_label:
            known = ", ".join(name_to_label)
            log.add(
                f"unknown class name {name!r}; known classes: {known}",
                scope=ANNOTATION,
                kind="unknown-id",
                **at,
            )
            continue
        corners = [_number(obj, f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in corners):
            log.add("missing or non-numeric bndbox xmin/ymin/xmax/ymax", scope=ANNOTATION, kind="box", **at)
            continue
        xmin, ymin, xmax, ymax = corners
        shown = f"[xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}]"
        box, problem = check_box(xmin - 1, ymin - 1, xmax, ymax, width, height, shown)
        if problem is not None:
            log.add(problem, scope=ANNOTATION, kind="box", **at)
            continue
        difficult = _text(obj, "difficult") == "1"
        (ignore_boxes if difficult else boxes).append(box)
        (ignore_labels if difficult else labels).append(name_to_label[name])
    return boxes, labels, ignore_boxes, ignore_labels


def _size(node: ET.Element, key: str) -> int | None:
    value = _number(node, f"size/{key}")
    if value is None or not math.isfinite(value) or value <= 0 or value != int(value):
        return None
    return int(value)


def _parse_xml(
    xml_file: Path, image_id: int, name_to_label: dict[str, int], log: ProblemLog
) -> ImageRecord | None:
    """One image's record, or None (with the problem logged) when the file is unusable."""
    at = {"file": str(xml_file), "scope": IMAGE, "image_id": image_id}
    if not xml_file.is_file():
        log.add("annotation file not found", kind="annotation-file", **at)
        return None
    try:
        tree = ET.parse(xml_file)
    except ET.ParseError as exc:
        log.add(f"malformed XML: {exc}", kind="malformed-file", **at)
        return None
    except OSError as exc:
        log.add(f"cannot read annotation file: {exc}", kind="annotation-file", **at)
        return None
    node = tree.getroot()
    width, height = _size(node, "width"), _size(node, "height")
    if width is None or height is None:
        log.add(
            "missing or invalid <size> (need positive integer <width> and <height>)",
            kind="image-record",
            **at,
        )
        return None
    file_name = _text(node, "filename") or f"{xml_file.stem}.jpg"
    boxes, labels, ignore_boxes, ignore_labels = _parse_objects(
        node, xml_file, image_id, width, height, name_to_label, log
    )
    return ImageRecord(
        image_id=image_id,
        file_name=f"JPEGImages/{file_name}",
        width=width,
        height=height,
        boxes=stack_boxes(boxes),
        labels=np.array(labels, np.int64),
        ignore_boxes=stack_boxes(ignore_boxes),
        ignore_labels=np.array(ignore_labels, np.int64),
    )


def load_voc(
    root: Path,
    split: str = "trainval",
    class_names: Sequence[str] | None = None,
    log: ProblemLog | None = None,
    masks: bool = False,
) -> DatasetIndex:
    """Read the images listed in `ImageSets/Main/<split>.txt` under a VOCdevkit-style `root`.

    `class_names` (default: the 20 Pascal VOC classes) get category ids and labels 1..C in that
    order. `difficult=1` objects become ignore regions. Image ids are positions in the split file;
    file names are relative to `root`. Images without objects are kept. Annotation ids are numbered
    1, 2, ... over the split (objects, then ignore regions, per image) so the index can be written
    as COCO.

    With `masks`, the split list is `ImageSets/Segmentation/<split>.txt` when that file exists
    (VOC's list of the images that have masks), else the Main one, and each image's `mask` is its
    `SegmentationClass/<id>.png`: palette index k is label k (class_names[k - 1]; 0 background,
    255 ignore). Images without that file have no mask (one warning counts them).

    Every problem raises one DataError at the end; with a `log`, problems go there instead and the
    index holds the images whose XML is valid, without their invalid objects. A missing or empty
    split file, or bad `class_names`, raises DataError either way.
    """
    root = Path(root)
    names = tuple(VOC_CLASSES if class_names is None else class_names)
    if not names or len(set(names)) != len(names):
        raise DataError(f"{root}: class names must be a non-empty list without duplicates, got {list(names)}")
    name_to_label = {name: i + 1 for i, name in enumerate(names)}
    split_file, ids = _read_split(root, split, masks)
    strict = log is None
    log = ProblemLog(str(split_file)) if log is None else log
    records = []
    without_mask: list[str] = []
    for image_id, stem in enumerate(ids):
        record = _parse_xml(root / "Annotations" / f"{stem}.xml", image_id, name_to_label, log)
        if record is None:
            continue
        records.append(record)
        if masks:
            mask_file = f"{MASK_FOLDER}/{stem}.png"
            if (root / mask_file).is_file():
                record.mask = MaskFile(mask_file)
            else:
                without_mask.append(stem)
    if without_mask:
        log.warn(
            f"{len(without_mask)} of {len(ids)} images have no {MASK_FOLDER}/<id>.png (first: "
            f"{without_mask[0]}); they have no semantic mask",
            kind="no-mask",
        )
    if strict:
        log.raise_if_any()
    next_id = 1
    for record in records:
        count = len(record.boxes) + len(record.ignore_boxes)
        record.annotation_ids = np.arange(next_id, next_id + count, dtype=np.int64)
        next_id += count
    categories = [Category(id=label, name=name, label=label) for name, label in name_to_label.items()]
    return DatasetIndex(records=records, categories=categories, image_root=root, source=split_file)
