"""In-memory form of a detection dataset, shared by every reader (COCO, VOC, synthetic).

Labels are contiguous: 1..C for the C categories, 0 is background (torchvision's convention).
`Category.id` keeps the dataset's own id so predictions can be written back with it.
Boxes are absolute pixel coordinates, (x1, y1, x2, y2), float32.
A record may also say where its semantic mask comes from (`mask`): readers fill it only when asked
for masks; `hardmine.data.masks.load_mask` reads it when needed, so no decoded mask is held here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Category:
    """One object class: the dataset's own id, its name and hardmine's contiguous label (1..C)."""

    id: int
    name: str
    label: int


@dataclass(frozen=True)
class MaskFile:
    """A semantic mask stored as a single-channel PNG (palette or greyscale) of the image's size:
    each value a label, 0 background, 1..C the categories, 255 ignore. `file_name` is relative to
    the dataset's image root (VOC `SegmentationClass/<id>.png`, the synthetic `masks/*.png`)."""

    file_name: str


@dataclass(frozen=True)
class Segment:
    """One COCO annotation's region in the semantic mask: `polygons` (each [2K] float64 x, y, ...)
    or a compressed `rle` ({"size": [h, w], "counts": bytes}); with neither (the annotation has no
    segmentation), its `box` stands in and is painted as ignore. Crowd regions are painted as ignore."""

    annotation_id: int
    label: int
    crowd: bool
    box: np.ndarray
    polygons: tuple[np.ndarray, ...] = ()
    rle: dict | None = None


@dataclass(frozen=True)
class Segments:
    """The semantic mask of a COCO image: its annotations' segments in file order, painted one after
    the other (where they overlap, the later annotation wins)."""

    segments: tuple[Segment, ...] = ()


MaskSource = MaskFile | Segments


@dataclass
class ImageRecord:
    """One image and its annotations.

    `boxes`/`labels` are the objects to learn. `ignore_boxes` are regions (VOC `difficult`, COCO
    `iscrowd`) that are neither objects nor negatives: candidates overlapping them are not sampled
    as background and detections on them are not counted as false positives. `mask` is where the
    semantic mask comes from, None when the dataset was read without masks or the image has none.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    annotation_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    mask: MaskSource | None = None


@dataclass
class DatasetIndex:
    """A whole split: records, categories and where the image files live."""

    records: list[ImageRecord]
    categories: list[Category]
    image_root: Path
    source: Path

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def label_to_category_id(self) -> dict[int, int]:
        return {c.label: c.id for c in self.categories}

    def category_id_to_label(self) -> dict[int, int]:
        return {c.id: c.label for c in self.categories}

    def class_names(self) -> list[str]:
        return [c.name for c in sorted(self.categories, key=lambda c: c.label)]
