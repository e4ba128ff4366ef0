"""Offline hard-negative mining: a trained detector's false positives on the training set, as a file.

A false positive is a detection scoring at least `score_thresh` whose IoU with every ground-truth
box of its image (any class) is below `iou_thresh`, and that does not lie on an ignore region
(IoU >= `iou_thresh` with one, or more than half of its area inside one: there the training
never takes a candidate as background either). `hardmine mine` writes them; training reads them
with `mining.file` (see `hardmine.models.hard_negatives` for what the heads do with them).

The file is JSON (docs/test-time-and-mining.md):

    {"format": "hardmine-hard-negatives", "version": 1,
     "checkpoint": "runs/x/model_final.pt", "dataset": "data/synth/train.json",
     "score_thresh": 0.5, "iou_thresh": 0.3, "num_images": 300, "num_regions": 812,
     "merged_with": null,
     "images": [{"image_id": 7, "file_name": "images/train_000007.png",
                 "boxes": [[x1, y1, x2, y2], ...], "scores": [...], "category_ids": [...]}, ...]}

Boxes are in original image pixels; `category_ids` are the dataset's own ids of the classes the
detector predicted. Only images with at least one region are listed. An entry names its image by
`image_id`, `file_name` or both (then they must agree), so a file mined on another dataset, or on a
renumbered one, is an error rather than regions on the wrong images.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou, nms

from hardmine.data.records import DatasetIndex, ImageRecord
from hardmine.engine.checkpoint import atomic_write
from hardmine.engine.inference import (
    Predictions,
    checked_split,
    load_trained,
    predict_dataset,
    require_detector,
)
from hardmine.engine.proposals import load_split_proposals
from hardmine.errors import DataError
from hardmine.models.matching import IGNORE_IOF, intersection_over_foreground

FORMAT = "hardmine-hard-negatives"
VERSION = 1
#: File name of a bootstrapping round's mined regions (in the round's folder).
FILE_NAME = "hard_negatives.json"
#: Merging two files (bootstrapping rounds accumulate): of regions overlapping at IoU >= this, in
#: one image, only the highest-scoring stays.
MERGE_IOU = 0.7


@dataclass
class MinedRegions:
    """One image's mined regions: boxes float32 [H, 4] (original pixels), scores [H], labels [H] (1..C)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def false_positive_mask(
    boxes: Tensor,
    scores: Tensor,
    gt_boxes: Tensor,
    ignore_boxes: Tensor,
    score_thresh: float,
    iou_thresh: float,
) -> Tensor:
    """[K] bool: which of one image's detections are false positives (see the module docstring)."""
    mask = scores >= score_thresh
    if boxes.numel() == 0:
        return mask
    for regions in (gt_boxes, ignore_boxes):
        if regions.numel():
            mask &= box_iou(boxes, regions).max(dim=1).values < iou_thresh
    if ignore_boxes.numel():
        mask &= intersection_over_foreground(boxes, ignore_boxes).max(dim=1).values <= IGNORE_IOF
    return mask


def find_false_positives(
    index: DatasetIndex, predictions: Predictions, score_thresh: float, iou_thresh: float
) -> dict[int, MinedRegions]:
    """image id -> the false positives among its predictions; images without any are left out."""
    out = {}
    for record in index.records:
        pred = predictions.get(record.image_id)
        if pred is None:
            continue
        boxes = pred["boxes"].float().reshape(-1, 4)
        mask = false_positive_mask(
            boxes,
            pred["scores"].float(),
            torch.from_numpy(record.boxes).float().reshape(-1, 4),
            torch.from_numpy(record.ignore_boxes).float().reshape(-1, 4),
            score_thresh,
            iou_thresh,
        )
        if mask.any():
            out[record.image_id] = MinedRegions(
                boxes[mask], pred["scores"][mask].float(), pred["labels"][mask]
            )
    return out


def mine_model(
    model: nn.Module,
    index: DatasetIndex,
    device: torch.device,
    score_thresh: float,
    iou_thresh: float,
    batch_size: int = 4,
    proposals: dict[int, Tensor] | None = None,
) -> dict[int, MinedRegions]:
    """Run `model` (single scale, no flip) over `index` and keep its false positives."""
    predictions = predict_dataset(model, index, device, batch_size=batch_size, proposals=proposals)
    return find_false_positives(index, predictions, score_thresh, iou_thresh)


@dataclass
class MiningOutcome:
    """What `mine_checkpoint` wrote: the file, the dataset mined and its regions per image id."""

    path: Path
    index: DatasetIndex
    mined: dict[int, MinedRegions]

    def describe(self) -> str:
        regions = sum(len(m) for m in self.mined.values())
        return (
            f"{regions} false positives on {len(self.mined)} of {len(self.index.records)} images of "
            f"{self.index.source} written to {self.path}"
        )


def mine_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    score_thresh: float,
    iou_thresh: float,
    overrides: list[str] | None = None,
    data: str = "",
    merge_with: str = "",
) -> MiningOutcome:
    """Write the false positives of a checkpoint's model (its config with `overrides`) on its
    data.train, or on the dataset `data`, to the hard-negative file `out`; with `merge_with` (a
    hard-negative file of the same dataset) its regions are kept too (`merge_mined`)."""
    cfg, model, payload, device = load_trained(checkpoint, overrides)
    require_detector(cfg, checkpoint, "mine")
    if data:
        cfg.data.train = data
    index = checked_split(cfg, payload, "train", checkpoint)
    proposals = load_split_proposals(cfg, "train", index)
    mined = mine_model(model, index, device, score_thresh, iou_thresh, cfg.eval.batch_size, proposals)
    if merge_with:
        mined = merge_mined(read_hard_negatives(merge_with, index), mined)
    path = write_hard_negatives(
        out,
        index,
        mined,
        checkpoint=str(checkpoint),
        score_thresh=score_thresh,
        iou_thresh=iou_thresh,
        merged_with=merge_with or None,
    )
    return MiningOutcome(path, index, mined)


def merge_mined(a: dict[int, MinedRegions], b: dict[int, MinedRegions]) -> dict[int, MinedRegions]:
    """The union of two mined sets, per image; of regions overlapping at IoU >= MERGE_IOU only the
    highest-scoring one stays."""
    out = dict(a)
    for image_id, regions in b.items():
        if image_id not in out:
            out[image_id] = regions
            continue
        old = out[image_id]
        boxes = torch.cat([old.boxes, regions.boxes])
        scores = torch.cat([old.scores, regions.scores])
        labels = torch.cat([old.labels, regions.labels])
        keep = nms(boxes, scores, MERGE_IOU)
        out[image_id] = MinedRegions(boxes[keep], scores[keep], labels[keep])
    return out


def write_hard_negatives(
    path: str | Path,
    index: DatasetIndex,
    mined: dict[int, MinedRegions],
    checkpoint: str,
    score_thresh: float,
    iou_thresh: float,
    merged_with: str | None = None,
) -> Path:
    """Write `mined` as a hard-negative file (module docstring), atomically; returns the path.

    Boxes are rounded to 0.01 px and scores to 6 significant digits, as in COCO results files.
    """
    label_to_id = index.label_to_category_id()
    images = []
    for record in index.records:
        regions = mined.get(record.image_id)
        if regions is None or len(regions) == 0:
            continue
        images.append(
            {
                "image_id": record.image_id,
                "file_name": record.file_name,
                "boxes": [[round(v, 2) for v in box] for box in regions.boxes.tolist()],
                "scores": [float(f"{s:.6g}") for s in regions.scores.tolist()],
                "category_ids": [label_to_id[int(label)] for label in regions.labels.tolist()],
            }
        )
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": str(checkpoint),
        "dataset": str(index.source),
        "score_thresh": score_thresh,
        "iou_thresh": iou_thresh,
        "num_images": len(index.records),
        "num_regions": sum(len(entry["boxes"]) for entry in images),
        "merged_with": merged_with,
        "images": images,
    }
    with atomic_write(path) as fh:
        fh.write((json.dumps(payload) + "\n").encode())
    return Path(path)


def _resolve_record(
    entry: dict[str, Any],
    where: str,
    by_id: dict[int, ImageRecord],
    by_name: dict[str, ImageRecord],
    source: Path,
) -> ImageRecord:
    image_id, file_name = entry.get("image_id"), entry.get("file_name")
    if image_id is None and file_name is None:
        raise DataError(f"{where}: has neither 'image_id' nor 'file_name'")
    if image_id is not None:
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"{where}: image_id must be an integer, got {image_id!r}")
        record = by_id.get(image_id)
        if record is None:
            raise DataError(f"{where}: image id {image_id} is not in {source}")
        if file_name is not None and file_name != record.file_name:
            raise DataError(
                f"{where}: image id {image_id} is {record.file_name!r} in {source}, not {file_name!r} "
                "(was the file mined on another dataset?)"
            )
        return record
    record = by_name.get(file_name) if isinstance(file_name, str) else None
    if record is None:
        raise DataError(f"{where}: file name {file_name!r} is not in {source}")
    return record


def _numbers(value: Any, where: str, key: str, count: int) -> list[float]:
    if not isinstance(value, list) or len(value) != count:
        raise DataError(f"{where}: '{key}' must be a list of {count} numbers, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise DataError(f"{where}: '{key}' must hold finite numbers, got {value!r}")
    return [float(v) for v in value]


def read_hard_negatives(path: str | Path, index: DatasetIndex) -> dict[int, MinedRegions]:
    """The regions of a hard-negative file per image id of `index`, boxes clipped to the image.

    Every problem is a DataError naming the file and the entry: a missing or malformed file, an
    image id / file name the dataset does not have (or that disagree), a category id it does not
    have, malformed or inverted boxes, lists of different lengths, an image listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"hard-negative file {path} does not exist (write one with hardmine mine)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f'{path}: not a hardmine hard-negative file (no "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise DataError(f"{path}: version {data.get('version')!r}; this hardmine reads version {VERSION}")
    entries = data.get("images")
    if not isinstance(entries, list):
        raise DataError(f"{path}: 'images' must be a list")
    by_id = {r.image_id: r for r in index.records}
    by_name = {r.file_name: r for r in index.records}
    id_to_label = index.category_id_to_label()
    out: dict[int, MinedRegions] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: images[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: must be an object, got {entry!r}")
        record = _resolve_record(entry, where, by_id, by_name, index.source)
        if record.image_id in out:
            raise DataError(f"{where}: image id {record.image_id} is listed twice")
        raw_boxes = entry.get("boxes")
        if not isinstance(raw_boxes, list):
            raise DataError(f"{where}: 'boxes' must be a list of [x1, y1, x2, y2]")
        n = len(raw_boxes)
        boxes = [_numbers(b, where, f"boxes[{j}]", 4) for j, b in enumerate(raw_boxes)]
        for j, (x1, y1, x2, y2) in enumerate(boxes):
            if x2 < x1 or y2 < y1:
                raise DataError(f"{where}: boxes[{j}] = {raw_boxes[j]} has x2 < x1 or y2 < y1")
        scores = _numbers(entry.get("scores", [1.0] * n), where, "scores", n)
        category_ids = entry.get("category_ids", [])
        if not isinstance(category_ids, list) or len(category_ids) not in (0, n):
            raise DataError(f"{where}: 'category_ids' must be a list of {n} category ids (or absent)")
        unknown = [c for c in category_ids if not isinstance(c, int) or c not in id_to_label]
        if unknown:
            raise DataError(f"{where}: category ids {unknown} are not categories of {index.source}")
        size = torch.tensor([record.width, record.height, record.width, record.height], dtype=torch.float32)
        out[record.image_id] = MinedRegions(
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).clamp(min=0).minimum(size),
            scores=torch.tensor(scores, dtype=torch.float32),
            labels=torch.tensor([id_to_label[c] for c in category_ids] or [0] * n, dtype=torch.int64),
        )
    return out


def load_hard_negatives(path: str | Path, index: DatasetIndex) -> dict[int, Tensor]:
    """image id -> [H, 4] mined boxes (original pixels) of a validated hard-negative file."""
    return {image_id: regions.boxes for image_id, regions in read_hard_negatives(path, index).items()}
