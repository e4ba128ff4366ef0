"""Check a COCO or VOC dataset and report every problem with its file and record: the engine of
`hardmine data check` and of the check that training runs first (`data.on_invalid`).

The readers find what the annotation files themselves get wrong (malformed JSON or XML, missing
fields, duplicate or unknown ids, boxes that are degenerate, non-finite or outside the image, empty
datasets); `check_dataset` runs them with a `ProblemLog`, so nothing stops at the first problem,
and adds what needs the image files (missing, unreadable or corrupt images, sizes that differ from
the annotations) and warnings about data that is usable but suspicious. `check_pair` compares a
training and a validation set; `without_invalid` applies the skip policy.

With `masks=True` the semantic masks are checked too: the readers check COCO segmentations
(malformed polygons or RLE), and the label PNGs are read here (missing, unreadable, not
single-channel, another size than the image, values neither a label nor 255). A mask problem is an
error of its image: skipping drops the image. Detection training does not read masks and does not
check them; segmentation training checks them (`load_checked_splits(..., masks=True)`).

Errors make a record (or the whole dataset) unusable; warnings never stop anything.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hardmine.data.loading import load_dataset
from hardmine.data.masks import inspect_mask_file
from hardmine.data.problems import (
    ANNOTATION,
    DATASET,
    ERROR,
    IMAGE,
    WARNING,
    Problem,
    ProblemLog,
    SplitsProblems,
)
from hardmine.data.records import DatasetIndex, MaskFile
from hardmine.errors import DataError

#: How image files are checked: not at all, by reading the header (size, format; fast), or by
#: decoding every pixel (also finds truncated and corrupt image data; slow on large datasets).
IMAGE_CHECKS = ("none", "header", "decode")
#: EXIF tag of the orientation; hardmine reads pixels as stored, so a rotation flag is suspicious.
_EXIF_ORIENTATION = 0x0112
#: Below this many images the files are checked in the calling thread.
_PARALLEL_FROM = 64


@dataclass
class DatasetCheck(SplitsProblems):
    """One dataset's check: what could be read of it (`index`, None when nothing could) and every
    problem found, in the order found."""

    path: Path
    index: DatasetIndex | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def fatal(self) -> list[Problem]:
        """Errors about the dataset as a whole: no skipping makes it usable."""
        return [p for p in self.errors if p.scope == DATASET]

    def summary(self) -> str:
        """'N images, N boxes, N ignore regions, N categories' of what was read."""
        if self.index is None:
            return "unreadable"
        records = self.index.records
        boxes = sum(len(r.boxes) for r in records)
        ignore = sum(len(r.ignore_boxes) for r in records)
        kind = "COCO" if self.path.suffix.lower() == ".json" else "VOC"
        with_mask = sum(1 for r in records if r.mask is not None)
        return (
            f"{kind}, {len(records)} images, {boxes} boxes, {ignore} ignore regions, "
            f"{len(self.index.categories)} categories"
            + (f", {with_mask} semantic masks" if with_mask else "")
        )


@dataclass(frozen=True)
class SkipCounts:
    """What `without_invalid` left out of one dataset."""

    images: int
    boxes_on_dropped_images: int
    annotations: int
    kept_images: int

    def describe(self) -> str:
        return (
            f"dropped {self.images} image(s) (with {self.boxes_on_dropped_images} boxes) and "
            f"{self.annotations} invalid annotation(s); {self.kept_images} images kept"
        )


def check_dataset(
    path: str | Path,
    image_root: str | Path | None = None,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    images: str = "header",
    workers: int | None = None,
    masks: bool = False,
) -> DatasetCheck:
    """Every problem of the dataset at `path` (a COCO .json or a VOC root; the options as in
    `load_dataset`), image files checked as `images` says (`IMAGE_CHECKS`) with up to `workers`
    threads (default: one per CPU, at most 8). With `masks`, the semantic masks too (label PNGs
    are always decoded, unless `images` is "none": their values must be read to be checked)."""
    if images not in IMAGE_CHECKS:
        raise ValueError(f"images must be one of {IMAGE_CHECKS}, got {images!r}")
    path = Path(path)
    log = ProblemLog(str(path))
    try:
        index = load_dataset(
            path, image_root=image_root, split=split, class_names=class_names, log=log, masks=masks
        )
    except DataError as exc:  # not readable as a dataset at all: one problem, nothing else to check
        return DatasetCheck(path, None, [*log.problems, Problem(str(exc), kind="file")])
    if images != "none":
        check_image_files(index, log, decode=images == "decode", workers=workers)
        if masks:
            check_mask_files(index, log, workers=workers)
    _index_warnings(index, log)
    return DatasetCheck(path, index, log.problems)


def check_image_files(index: DatasetIndex, log: ProblemLog, decode: bool, workers: int | None = None) -> None:
    """Log each record's image file that is missing, unreadable or of another size than annotated
    (errors), or flagged as rotated by EXIF (a warning); `decode` reads all pixel data, too."""
    jobs = [(index.image_root / r.file_name, (r.width, r.height), decode) for r in index.records]
    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(jobs) >= _PARALLEL_FROM:
        with ThreadPoolExecutor(workers) as pool:  # PIL decodes without holding the GIL
            findings = list(pool.map(_inspect_image, *zip(*jobs)))
    else:
        findings = [_inspect_image(*job) for job in jobs]
    for record, (path, _, _), found in zip(index.records, jobs, findings):
        for severity, kind, message in found:
            log.add(
                message,
                file=str(path),
                record=f"image id {record.image_id}",
                scope=IMAGE,
                kind=kind,
                image_id=record.image_id,
                severity=severity,
            )


def check_mask_files(index: DatasetIndex, log: ProblemLog, workers: int | None = None) -> None:
    """Log each record's label PNG that is missing, unreadable, not single-channel, of another size
    than its image or with values that are neither a label (0..C) nor 255 (errors of the image)."""
    records = [r for r in index.records if isinstance(r.mask, MaskFile)]
    jobs = [(index.image_root / r.mask.file_name, r.width, r.height, index.num_classes) for r in records]
    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(jobs) >= _PARALLEL_FROM:
        with ThreadPoolExecutor(workers) as pool:
            findings = list(pool.map(lambda job: inspect_mask_file(*job)[1], jobs))
    else:
        findings = [inspect_mask_file(*job)[1] for job in jobs]
    for record, (path, *_), found in zip(records, jobs, findings):
        for kind, message in found:
            log.add(
                message,
                file=str(path),
                record=f"image id {record.image_id} ({record.file_name})",
                scope=IMAGE,
                kind=kind,
                image_id=record.image_id,
            )


def _inspect_image(path: Path, size: tuple[int, int], decode: bool) -> list[tuple[str, str, str]]:
    """(severity, kind, message) of each problem of one image file."""
    try:
        with Image.open(path) as im:
            found = im.size
            orientation = _orientation(im)
            if decode:
                im.load()
    except FileNotFoundError:
        return [(ERROR, "image-missing", "image file not found")]
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        return [(ERROR, "image-unreadable", f"cannot read image: {exc}")]
    out = []
    if found != size:
        out.append(
            (
                ERROR,
                "image-size",
                f"image is {found[0]}x{found[1]} but the annotations say {size[0]}x{size[1]}",
            )
        )
    if orientation not in (1, None):
        out.append(
            (
                WARNING,
                "exif-rotation",
                f"EXIF orientation {orientation}: hardmine reads the pixels as stored (unrotated); "
                "the boxes must be in that orientation",
            )
        )
    return out


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation found while reading the header (1 when none): `getexif()` itself would
    decode a whole PNG to look for a late eXIf chunk."""
    raw = im.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        return int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block: not ours to judge, the pixels are read as stored
        return 1


def _index_warnings(index: DatasetIndex, log: ProblemLog) -> None:
    """Warnings about usable but suspicious data: no boxes at all, unused categories, files
    shared by several image ids, boxes under one pixel."""
    records = index.records
    if records and not any(len(r.boxes) for r in records):
        log.warn(f"no boxes in any of the {len(records)} images", kind="no-annotations")
    used = Counter(int(label) for r in records for label in r.labels)
    for c in index.categories:
        if records and not used[c.label]:
            log.warn(
                "no boxes of this category", record=f"category id {c.id} ({c.name})", kind="unused-category"
            )
    first: dict[str, int] = {}
    for r in records:
        if r.file_name in first:
            log.warn(
                f"same image file as image id {first[r.file_name]}",
                record=f"image id {r.image_id} ({r.file_name})",
                kind="duplicate-file",
                image_id=r.image_id,
            )
        else:
            first[r.file_name] = r.image_id
    for r in records:
        if not len(r.boxes):
            continue
        widths, heights = r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1]
        ids = r.annotation_ids if len(r.annotation_ids) >= len(r.boxes) else None
        for k in np.flatnonzero(np.minimum(widths, heights) < 1.0):
            box = ", ".join(f"{v:g}" for v in r.boxes[k])
            what = f"annotation id {int(ids[k])} (image id {r.image_id})" if ids is not None else ""
            log.warn(
                f"box (x1, y1, x2, y2) = ({box}) is {widths[k]:.3g}x{heights[k]:.3g} px, under 1 pixel",
                record=what or f"image id {r.image_id} ({r.file_name}), box {k}",
                kind="tiny-box",
                image_id=r.image_id,
            )


def check_pair(train: DatasetCheck, val: DatasetCheck) -> list[Problem]:
    """Problems between a training and a validation set: categories that differ (an error: labels
    would not match) and image files in both (a warning: the evaluation would be optimistic)."""
    if train.index is None or val.index is None:
        return []
    problems = []
    difference = category_difference(train.index, val.index)
    if difference:
        problems.append(Problem(difference, kind="split-categories"))
    files = {(train.index.image_root / r.file_name).resolve() for r in train.index.records}
    shared = sorted(
        str(p) for p in {(val.index.image_root / r.file_name).resolve() for r in val.index.records} & files
    )
    if shared:
        shown = ", ".join(shared[:3]) + (", ..." if len(shared) > 3 else "")
        problems.append(
            Problem(
                f"{len(shared)} image file(s) are in both {train.path} and {val.path}: {shown}",
                severity=WARNING,
                kind="train-val-overlap",
            )
        )
    return problems


def category_difference(train: DatasetIndex, val: DatasetIndex) -> str | None:
    """Why the categories (ids and names) of two datasets differ, or None when they are the same."""
    a = [(c.id, c.name) for c in train.categories]
    b = [(c.id, c.name) for c in val.categories]
    if a == b:
        return None
    return (
        f"categories differ between {train.source} and {val.source}: "
        f"only in train {sorted(set(a) - set(b))}, only in val {sorted(set(b) - set(a))}"
    )


def without_invalid(check: DatasetCheck) -> tuple[DatasetIndex, SkipCounts]:
    """The dataset without the images that have errors (with all their boxes); the readers
    already left out the invalid annotations. Needs a dataset without dataset-scope errors."""
    if check.index is None or check.fatal:
        raise ValueError("a dataset with dataset-scope errors cannot be used by skipping records")
    errors = check.errors
    bad_ids = {p.image_id for p in errors if p.scope == IMAGE and p.image_id is not None}
    kept = [r for r in check.index.records if r.image_id not in bad_ids]
    dropped = [r for r in check.index.records if r.image_id in bad_ids]
    # records the reader could not build (malformed XML, an image entry without an id) are gone
    # already; they count as dropped too
    anonymous = sum(1 for p in errors if p.scope == IMAGE and p.image_id is None)
    counts = SkipCounts(
        images=len(bad_ids) + anonymous,
        boxes_on_dropped_images=sum(len(r.boxes) for r in dropped),
        annotations=sum(1 for p in errors if p.scope == ANNOTATION),
        kept_images=len(kept),
    )
    return replace(check.index, records=kept), counts


def format_check(check: DatasetCheck, max_listed: int = 0) -> list[str]:
    """Report lines of one dataset: its summary, then each problem (at most `max_listed`, 0 = all)."""
    lines = [f"{check.path}: {check.summary()}"]
    lines += _problem_lines(check.problems, str(check.path), max_listed)
    return lines


def _problem_lines(problems: list[Problem], context: str, max_listed: int) -> list[str]:
    ordered = [p for p in problems if p.is_error] + [p for p in problems if not p.is_error]
    shown = ordered if max_listed <= 0 else ordered[:max_listed]
    lines = [f"  {p.severity}: {p.describe(context)}" for p in shown]
    if len(ordered) > len(shown):
        lines.append(f"  ... and {len(ordered) - len(shown)} more (--max-listed 0 lists all)")
    return lines or ["  no problems found"]


def format_report(checks: list[DatasetCheck], pair: list[Problem], max_listed: int = 0) -> str:
    """The whole report of `hardmine data check`: each dataset, the pair, and counts by kind."""
    lines: list[str] = []
    for check in checks:
        lines += format_check(check, max_listed)
    if len(checks) == 2:
        lines.append("train vs val:")
        lines += _problem_lines(pair, "", max_listed)
    problems = [p for c in checks for p in c.problems] + pair
    errors = Counter(p.kind or "other" for p in problems if p.is_error)
    warnings = Counter(p.kind or "other" for p in problems if not p.is_error)
    total = f"{sum(errors.values())} error(s), {sum(warnings.values())} warning(s)"
    for title, counter in (("errors", errors), ("warnings", warnings)):
        if counter:
            total += f"; {title}: " + ", ".join(f"{k} {n}" for k, n in sorted(counter.items()))
    lines.append(total)
    return "\n".join(lines)
