"""Semantic masks: COCO segmentations (polygons, RLE) and label PNGs, checked and composed into one
uint8 [H, W] mask per image: 0 background, 1..C hardmine's contiguous labels, 255 ignore.

Readers keep only where a mask comes from (`records.MaskFile`, `records.Segments`); `load_mask`
decodes it when it is needed, so a dataset never holds its decoded masks. Polygons and RLE go
through the COCO mask API (faster-coco-eval's pycocotools-compatible `frPyObjects` / `merge` /
`decode`), so they rasterise exactly as in COCO's own tools.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faster_coco_eval.core.mask as mask_api
import numpy as np
from PIL import Image, UnidentifiedImageError

from hardmine.data.records import DatasetIndex, ImageRecord, MaskFile, Segment, Segments
from hardmine.errors import DataError

#: Mask value of pixels that are neither background nor a category (VOC borders, COCO crowds).
IGNORE_LABEL = 255
#: Labels must stay below IGNORE_LABEL in a uint8 mask.
MAX_CLASSES = IGNORE_LABEL - 1
#: PNG modes whose pixel values are the labels themselves.
LABEL_MODES = ("P", "L")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_polygons(raw: list) -> tuple[np.ndarray, ...]:
    """COCO polygons ([[x1, y1, x2, y2, ...], ...]) as float64 arrays; ValueError says what is wrong."""
    if not raw or not all(isinstance(p, list) for p in raw):
        raise ValueError("segmentation polygons must be a non-empty list of lists [x1, y1, x2, y2, ...]")
    polygons = []
    for k, polygon in enumerate(raw):
        for v in polygon:
            if not _is_number(v) or not math.isfinite(v):
                raise ValueError(f"polygon {k} has a coordinate that is not a finite number: {v!r}")
        if len(polygon) % 2:
            raise ValueError(f"polygon {k} has {len(polygon)} coordinates, an odd number (x, y pairs)")
        if len(polygon) < 6:
            raise ValueError(f"polygon {k} has {len(polygon) // 2} point(s); a polygon needs at least 3")
        polygons.append(np.asarray(polygon, np.float64))
    return tuple(polygons)


def parse_rle(raw: dict, width: int, height: int) -> dict:
    """A COCO RLE (counts a list of run lengths or a compressed string) of a `width` x `height`
    image as a compressed RLE; ValueError says what is wrong (size, counts)."""
    size = raw.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_count(v) for v in size)):
        raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
    if size != [height, width]:
        raise ValueError(f"RLE size [h, w] = {size} differs from the image's [{height}, {width}]")
    counts = raw.get("counts")
    if isinstance(counts, list):
        if not all(_is_count(v) for v in counts):
            bad = next(v for v in counts if not _is_count(v))
            raise ValueError(f"RLE counts must be non-negative integers, got {bad!r}")
        if sum(counts) != height * width:
            raise ValueError(
                f"RLE counts cover {sum(counts)} pixels, the {width}x{height} image has {height * width}"
            )
        return mask_api.frPyObjects({"size": size, "counts": counts}, height, width)
    if isinstance(counts, str | bytes):
        rle = {
            "size": size,
            "counts": counts.encode("ascii", "replace") if isinstance(counts, str) else counts,
        }
        try:  # the mask API parses the compressed string and checks that it covers the image exactly
            mask_api.decode(rle)
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"malformed RLE counts: {exc}") from None
        return rle
    raise ValueError(
        f"RLE 'counts' must be a list of run lengths or a compressed string, got {type(counts).__name__}"
    )


def parse_segment(ann: dict, label: int, crowd: bool, box: np.ndarray, width: int, height: int) -> Segment:
    """The `Segment` of a COCO annotation (already checked as a box annotation); an annotation with
    no or an empty `segmentation` gets its box. ValueError says what is wrong with the segmentation."""
    raw = ann.get("segmentation")
    aid = int(ann["id"])
    if raw is None or raw == [] or raw == {}:
        return Segment(aid, label, crowd, box)
    if isinstance(raw, list):
        return Segment(aid, label, crowd, box, polygons=parse_polygons(raw))
    if isinstance(raw, dict):
        return Segment(aid, label, crowd, box, rle=parse_rle(raw, width, height))
    raise ValueError(
        "'segmentation' must be polygons (a list of lists) or RLE (an object with size and counts), "
        f"got {type(raw).__name__}"
    )


def has_shape(segment: Segment) -> bool:
    """Whether the annotation had a segmentation (else its box stands in)."""
    return bool(segment.polygons) or segment.rle is not None


def segments_mask(segments: Segments, width: int, height: int) -> np.ndarray:
    """Paint the segments in order on a background mask: each with its label, crowds and segments
    without a shape (their box, every pixel it touches) as IGNORE_LABEL; later ones win."""
    mask = np.zeros((height, width), np.uint8)
    for segment in segments.segments:
        value = IGNORE_LABEL if segment.crowd or not has_shape(segment) else segment.label
        if segment.polygons:
            region = mask_api.decode(
                mask_api.merge(mask_api.frPyObjects(list(segment.polygons), height, width))
            )
            mask[region.astype(bool)] = value
        elif segment.rle is not None:
            mask[mask_api.decode(segment.rle).astype(bool)] = value
        else:
            x1, y1, x2, y2 = segment.box
            xa, ya = max(math.floor(x1), 0), max(math.floor(y1), 0)
            mask[ya : min(math.ceil(y2), height), xa : min(math.ceil(x2), width)] = value
    return mask


def encode_segment(segment: Segment) -> list | dict | None:
    """The COCO `segmentation` value of a segment (compressed RLE counts as a string), None without."""
    if segment.polygons:
        return [p.tolist() for p in segment.polygons]
    if segment.rle is not None:
        counts = segment.rle["counts"]
        return {
            "size": list(segment.rle["size"]),
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
        }
    return None


def inspect_mask_file(
    path: Path, width: int, height: int, num_classes: int
) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """Read a label PNG: (mask or None, [(kind, message)] of its problems): missing, unreadable,
    not single-channel, another size than the image, values neither 0..num_classes nor 255."""
    try:
        with Image.open(path) as im:
            if im.mode not in LABEL_MODES:
                return None, [
                    (
                        "mask-format",
                        f"mask mode is {im.mode}; a label mask is a single-channel PNG (palette or "
                        "greyscale) whose values are the labels",
                    )
                ]
            found = im.size
            mask = np.asarray(im, np.uint8)
    except FileNotFoundError:
        return None, [("mask-missing", "mask file not found")]
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        return None, [("mask-unreadable", f"cannot read mask: {exc}")]
    problems = []
    if found != (width, height):
        problems.append(("mask-size", f"mask is {found[0]}x{found[1]} but the image is {width}x{height}"))
    values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = values[(values > num_classes) & (values != IGNORE_LABEL)]
    if len(bad):
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        problems.append(
            (
                "mask-values",
                f"mask values {shown} are neither a label 0..{num_classes} nor {IGNORE_LABEL} (ignore)",
            )
        )
    return (None if problems else mask), problems


def load_mask(record: ImageRecord, index: DatasetIndex) -> np.ndarray:
    """The semantic mask of `record` (uint8 [height, width]: 0 background, 1..C labels, 255 ignore),
    decoded now. DataError, naming the file and record, when it has none or its file is invalid."""
    where = f"image id {record.image_id} ({record.file_name})"
    if index.num_classes > MAX_CLASSES:
        raise DataError(
            f"{index.source}: {index.num_classes} categories do not fit a uint8 mask with 255 as ignore"
        )
    if record.mask is None:
        raise DataError(
            f"{index.source}: {where}: no semantic mask (read the dataset with masks=True; VOC images "
            "need SegmentationClass/<id>.png, COCO annotations a segmentation)"
        )
    if isinstance(record.mask, MaskFile):
        path = index.image_root / record.mask.file_name
        mask, problems = inspect_mask_file(path, record.width, record.height, index.num_classes)
        if mask is None:
            raise DataError(f"{path}: {where}: " + "; ".join(message for _, message in problems))
        return mask
    return segments_mask(record.mask, record.width, record.height)


def label_palette(colours: Sequence[tuple[int, int, int]]) -> list[int]:
    """A PNG palette (768 values) giving label k the colour `colours[k - 1]`, background black and
    IGNORE_LABEL white, so a label mask can be looked at."""
    palette = [0] * 768
    for label, colour in enumerate(colours, start=1):
        palette[3 * label : 3 * label + 3] = list(colour)
    palette[3 * IGNORE_LABEL : 3 * IGNORE_LABEL + 3] = [255, 255, 255]
    return palette


def write_mask_png(path: Path, mask: np.ndarray, palette: list[int] | None = None) -> None:
    """Save a uint8 label mask as a palette PNG (values unchanged; `palette` only colours them)."""
    mask = np.ascontiguousarray(mask, np.uint8)
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    image.putpalette(palette or label_palette([]))
    image.save(path, format="PNG", compress_level=1)
