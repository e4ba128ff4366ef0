"""Read and write COCO-style detection annotations, with validation that names the bad record.

The reader checks the whole file and raises one `DataError` listing every problem it found (up to
`MAX_LISTED`), so a user fixes a broken export in one round instead of one error per run; given a
`ProblemLog` it reports into that instead and returns what is valid (`hardmine.data.check`).
The box checks are shared with the VOC reader. With `masks=True` it also reads where each image's
semantic mask comes from: an image's `sem_seg_file_name` (a label PNG), else its annotations'
`segmentation` (polygons or RLE), checked here and decoded later by `hardmine.data.masks`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hardmine.data.masks import IGNORE_LABEL, encode_segment, has_shape, parse_segment
from hardmine.data.problems import ANNOTATION, IMAGE, ProblemLog
from hardmine.data.problems import MAX_LISTED as MAX_LISTED
from hardmine.data.records import Category, DatasetIndex, ImageRecord, MaskFile, Segment, Segments
from hardmine.errors import DataError

#: A box may extend this many pixels past the image border; it is clipped. Further out is an error.
BOX_TOLERANCE = 1.0

REQUIRED_KEYS = ("images", "annotations", "categories")
#: Image field (a hardmine extension, detectron2's name) naming the image's label PNG, relative to
#: the image root; read with `masks=True`.
MASK_FILE_KEY = "sem_seg_file_name"


def check_box(
    x1: float, y1: float, x2: float, y2: float, width: int, height: int, shown: str
) -> tuple[np.ndarray | None, str | None]:
    """Validate an xyxy box against its image; return (clipped box, None) or (None, problem).

    `shown` is the box as the user wrote it (COCO xywh, VOC 1-based corners), quoted in problems.
    """
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, f"box {shown} has a non-finite coordinate"
    if x2 <= x1 or y2 <= y1:
        return None, f"box {shown} has zero or negative size ({x2 - x1:g}x{y2 - y1:g})"
    tol = BOX_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        return None, f"box {shown} extends outside the {width}x{height} image"
    box = np.array([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)], np.float32)
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, f"box {shown} lies on the border of the {width}x{height} image and has no area inside it"
    return box, None


def stack_boxes(boxes: list[np.ndarray]) -> np.ndarray:
    """[N, 4] float32 array from a list of boxes, (0, 4) when empty."""
    return np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read annotation file: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DataError(f"{path}: malformed JSON at {where}: {exc.msg}") from None


def _parse_categories(raw: Any, log: ProblemLog) -> list[Category]:
    if not isinstance(raw, list):
        log.add("'categories' must be a list", kind="malformed-file")
        return []
    seen: dict[int, int] = {}
    valid: list[tuple[int, str]] = []
    for pos, cat in enumerate(raw):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            log.add("missing or non-integer 'id'", record=f"categories[{pos}]", kind="category")
            continue
        cid = cat["id"]
        if cid in seen:
            log.add(
                f"duplicate id (categories[{seen[cid]}] and categories[{pos}])",
                record=f"category id {cid}",
                kind="duplicate-id",
            )
            continue
        seen[cid] = pos
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            log.add("missing or empty 'name'", record=f"category id {cid}", kind="category")
            continue
        valid.append((cid, name))
    if not raw:
        log.add("no categories in 'categories'", kind="empty-dataset")
    valid.sort()
    return [Category(id=cid, name=name, label=i + 1) for i, (cid, name) in enumerate(valid)]


def _parse_images(raw: Any, log: ProblemLog, masks: bool) -> dict[int, ImageRecord]:
    """Image records by id, in file order (with their mask file, if `masks` and they name one);
    annotations are attached later."""
    if not isinstance(raw, list):
        log.add("'images' must be a list", kind="malformed-file")
        return {}
    if not raw:
        log.add("empty dataset: no images in 'images'", kind="empty-dataset")
    seen: dict[int, int] = {}
    records: dict[int, ImageRecord] = {}
    for pos, img in enumerate(raw):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            log.add("missing or non-integer 'id'", record=f"images[{pos}]", scope=IMAGE, kind="image-record")
            continue
        iid = img["id"]
        if iid in seen:
            log.add(
                f"duplicate id (images[{seen[iid]}] and images[{pos}])",
                record=f"image id {iid}",
                scope=IMAGE,
                kind="duplicate-id",
                image_id=iid,
            )
            continue
        seen[iid] = pos
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            log.add(
                "missing or empty 'file_name'",
                record=f"image id {iid}",
                scope=IMAGE,
                kind="image-record",
                image_id=iid,
            )
            continue
        size_ok = True
        where = {"record": f"image id {iid} ({file_name})", "image_id": iid}
        for key in ("width", "height"):
            value = img.get(key)
            if value is None:
                log.add(f"missing '{key}'", scope=IMAGE, kind="image-record", **where)
                size_ok = False
            elif not (_is_number(value) and math.isfinite(value) and value == int(value) and value > 0):
                log.add(
                    f"'{key}' must be a positive integer, got {value!r}",
                    scope=IMAGE,
                    kind="image-record",
                    **where,
                )
                size_ok = False
        mask_file = img.get(MASK_FILE_KEY) if masks else None
        if mask_file is not None and (not isinstance(mask_file, str) or not mask_file):
            log.add(
                f"'{MASK_FILE_KEY}' must be a file name, got {mask_file!r}",
                scope=IMAGE,
                kind="mask-file",
                **where,
            )
            continue
        if size_ok:
            record = ImageRecord(iid, file_name, int(img["width"]), int(img["height"]))
            record.mask = MaskFile(mask_file) if mask_file else None
            records[iid] = record
    return records


def _parse_annotations(
    raw: Any,
    records: dict[int, ImageRecord],
    image_ids: set[int],
    cat_to_label: dict[int, int],
    category_ids: set[int],
    log: ProblemLog,
    masks: bool,
) -> None:
    """Validate the annotations and fill each record's boxes, labels and ignore regions; with
    `masks`, each record without a mask file gets its annotations' segments, in file order."""
    if not isinstance(raw, list):
        log.add("'annotations' must be a list", kind="malformed-file")
        return
    # per image: [boxes, labels, ids] for objects and for crowd (ignore) regions
    objects: dict[int, tuple[list, list, list]] = {iid: ([], [], []) for iid in records}
    crowds: dict[int, tuple[list, list, list]] = {iid: ([], [], []) for iid in records}
    segments: dict[int, list[Segment]] = {iid: [] for iid in records}
    without_shape: list[int] = []  # ids of annotations with no segmentation
    seen: dict[int, int] = {}
    for pos, ann in enumerate(raw):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            log.add(
                "missing or non-integer 'id'",
                record=f"annotations[{pos}]",
                scope=ANNOTATION,
                kind="annotation",
            )
            continue
        aid = ann["id"]
        if aid in seen:
            log.add(
                f"duplicate id (annotations[{seen[aid]}] and annotations[{pos}])",
                record=f"annotation id {aid}",
                scope=ANNOTATION,
                kind="duplicate-id",
            )
            continue
        seen[aid] = pos
        iid, cid = ann.get("image_id"), ann.get("category_id")
        at = {
            "record": f"annotation id {aid} (image id {iid})",
            "scope": ANNOTATION,
            "image_id": iid if _is_int(iid) else None,
        }
        if not _is_int(iid) or iid not in image_ids:
            log.add(f"unknown image id {iid!r}", kind="unknown-id", **at)
            continue
        if not _is_int(cid) or cid not in category_ids:
            log.add(f"unknown category id {cid!r}", kind="unknown-id", **at)
            continue
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, bool):
            log.add(f"'iscrowd' must be 0 or 1, got {crowd!r}", kind="annotation", **at)
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            log.add(f"'bbox' must be a list of 4 numbers [x, y, w, h], got {bbox!r}", kind="box", **at)
            continue
        record = records.get(iid)
        if record is None:  # the image itself is invalid and already reported
            continue
        x, y, w, h = (float(v) for v in bbox)
        shown = "[" + ", ".join(f"{v:g}" for v in bbox) + "]"
        box, problem = check_box(x, y, x + w, y + h, record.width, record.height, shown)
        if problem is not None:
            log.add(problem, kind="box", **at)
            continue
        label = cat_to_label.get(cid)
        if label is None:  # its category is invalid and already reported
            continue
        target = crowds[iid] if crowd else objects[iid]
        target[0].append(box)
        target[1].append(label)
        target[2].append(aid)
        if masks and record.mask is None:
            try:
                segment = parse_segment(ann, label, bool(crowd), box, record.width, record.height)
            except ValueError as exc:
                log.add(f"segmentation: {exc}", kind="segmentation", **{**at, "scope": IMAGE})
                continue
            segments[iid].append(segment)
            if not has_shape(segment):
                without_shape.append(aid)
    if without_shape:
        log.warn(
            f"{len(without_shape)} annotation(s) have no segmentation (first: annotation id "
            f"{without_shape[0]}); their boxes are ignore ({IGNORE_LABEL}) in the semantic masks",
            kind="no-segmentation",
        )
    for iid, record in records.items():
        if masks and record.mask is None:
            record.mask = Segments(tuple(segments[iid]))
        boxes, labels, ids = objects[iid]
        crowd_boxes, crowd_labels, crowd_ids = crowds[iid]
        record.boxes = stack_boxes(boxes)
        record.labels = np.array(labels, np.int64)
        record.ignore_boxes = stack_boxes(crowd_boxes)
        record.ignore_labels = np.array(crowd_labels, np.int64)
        record.annotation_ids = np.array(ids + crowd_ids, np.int64)


def load_coco(
    ann_file: Path, image_root: Path | None = None, log: ProblemLog | None = None, masks: bool = False
) -> DatasetIndex:
    """Read a COCO detection file into a validated `DatasetIndex`.

    Categories sorted by id get labels 1..C. Images without annotations are kept (pure negatives).
    `iscrowd=1` annotations become ignore regions. Boxes within `BOX_TOLERANCE` px outside the
    image are clipped. `annotation_ids` holds the ids of the boxes followed by those of the ignore
    regions, so `write_coco` can write the same ids back. `image_root` (default: the annotation
    file's folder) is the folder that each image's `file_name` is relative to.

    With `masks`, each record's `mask` says where its semantic mask comes from: the image's
    `sem_seg_file_name` (a label PNG under the image root), else its annotations' `segmentation`s
    (polygons or RLE, checked here: a malformed one is an error of its image), painted in file
    order; an annotation without a segmentation is painted as ignore over its box (one warning
    counts them). Without `masks`, segmentations are not looked at.

    Every problem raises one DataError at the end; with a `log`, problems go there instead and the
    index holds what is valid (invalid image records and annotations left out). A file that cannot
    be read as a COCO JSON object raises DataError either way.
    """
    ann_file = Path(ann_file)
    data = _read_json(ann_file)
    strict = log is None
    log = ProblemLog(str(ann_file)) if log is None else log
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a JSON object with keys {', '.join(REQUIRED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DataError(
            f"{ann_file}: missing top-level key(s) {', '.join(missing)} (a COCO file needs "
            f"{', '.join(REQUIRED_KEYS)})"
        )
    categories = _parse_categories(data["categories"], log)
    records = _parse_images(data["images"], log, masks)
    raw_images = data["images"] if isinstance(data["images"], list) else []
    image_ids = {img["id"] for img in raw_images if isinstance(img, dict) and _is_int(img.get("id"))}
    raw_cats = data["categories"] if isinstance(data["categories"], list) else []
    category_ids = {c["id"] for c in raw_cats if isinstance(c, dict) and _is_int(c.get("id"))}
    cat_to_label = {c.id: c.label for c in categories}
    _parse_annotations(data["annotations"], records, image_ids, cat_to_label, category_ids, log, masks)
    if strict:
        log.raise_if_any()
    return DatasetIndex(
        records=list(records.values()),
        categories=categories,
        image_root=Path(image_root) if image_root is not None else ann_file.parent,
        source=ann_file,
    )


def _checked_annotation_ids(index: DatasetIndex) -> Iterable[np.ndarray]:
    """Each record's annotation ids (boxes then ignore regions); fresh unique ids where a record has none."""
    used = [r.annotation_ids for r in index.records if len(r.annotation_ids)]
    next_id = int(max(ids.max() for ids in used)) + 1 if used else 1
    for r in index.records:
        if len(r.boxes) != len(r.labels) or len(r.ignore_boxes) != len(r.ignore_labels):
            raise DataError(f"image id {r.image_id} ({r.file_name}): boxes and labels differ in count")
        count = len(r.boxes) + len(r.ignore_boxes)
        if len(r.annotation_ids) == count:
            yield r.annotation_ids
        elif len(r.annotation_ids) == 0:
            yield np.arange(next_id, next_id + count, dtype=np.int64)
            next_id += count
        else:
            raise DataError(
                f"image id {r.image_id} ({r.file_name}): {len(r.annotation_ids)} annotation ids for "
                f"{len(r.boxes)} boxes + {len(r.ignore_boxes)} ignore regions"
            )


def _coco_annotation(
    ann_id: int, image_id: int, category_id: int, box: np.ndarray, crowd: int, segment: Segment | None
) -> dict:
    # float64 arithmetic on float32 corners is exact, so x + w reads back as the same float32 x2
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    ann = {
        "id": int(ann_id),
        "image_id": int(image_id),
        "category_id": int(category_id),
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": crowd,
    }
    segmentation = encode_segment(segment) if segment is not None else None
    if segmentation is not None:
        ann["segmentation"] = segmentation
    return ann


def write_coco(index: DatasetIndex, path: Path) -> None:
    """Write `index` as a COCO JSON file that `load_coco` reads back to the same ids, boxes and labels.

    Ignore regions are written as `iscrowd=1` annotations; categories keep their original ids.
    Masks go along: a record's mask file as `sem_seg_file_name`, its segments as the `segmentation`
    of the annotations with their ids.
    """
    label_to_id = index.label_to_category_id()
    images, annotations = [], []
    for record, ann_ids in zip(index.records, _checked_annotation_ids(index)):
        image = {
            "id": int(record.image_id),
            "file_name": record.file_name,
            "width": int(record.width),
            "height": int(record.height),
        }
        if isinstance(record.mask, MaskFile):
            image[MASK_FILE_KEY] = record.mask.file_name
        images.append(image)
        shapes = (
            {s.annotation_id: s for s in record.mask.segments} if isinstance(record.mask, Segments) else {}
        )
        pairs = [(b, lab, 0) for b, lab in zip(record.boxes, record.labels)]
        pairs += [(b, lab, 1) for b, lab in zip(record.ignore_boxes, record.ignore_labels)]
        for ann_id, (box, label, crowd) in zip(ann_ids, pairs):
            segment = shapes.get(int(ann_id))
            annotations.append(
                _coco_annotation(ann_id, record.image_id, label_to_id[int(label)], box, crowd, segment)
            )
    categories = [{"id": c.id, "name": c.name} for c in sorted(index.categories, key=lambda c: c.id)]
    data = {
        "info": {"description": "written by hardmine"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
