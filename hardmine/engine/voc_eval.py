"""Pascal VOC detection metrics, written here because no maintained library computes them.

The rules are the VOC devkit's (VOCevaldet): per class, detections are taken in descending score
order; each is matched to the ground-truth box it overlaps most (IoU >= threshold), counting
difficult boxes; a match to a difficult box makes the detection neither TP nor FP, a match to an
object not yet claimed makes it a TP and anything else (no overlap, or a duplicate on a claimed
object) is a FP. Classes without (non-difficult) ground truth are left out of the mean.

One deliberate difference: the devkit measures boxes in integer pixel indices (width = x2 - x1 + 1);
hardmine boxes are continuous coordinates, so IoU uses width = x2 - x1. On small boxes the
numbers can therefore differ slightly from the devkit's.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from hardmine.data.records import DatasetIndex
from hardmine.engine.coco_eval import Predictions, prediction_arrays

_FP, _TP, _IGNORED = 0, 1, 2


def _match_image(
    boxes: np.ndarray, objects: np.ndarray, difficult: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Outcome (_FP / _TP / _IGNORED) of each detection of one class in one image.

    `boxes` must be sorted by descending score. Each detection's best-overlapping box does not
    depend on the others, so greedy matching reduces to: the first detection (in score order) whose
    best box is a given object is its TP, later ones are duplicates.
    """
    outcome = np.full(len(boxes), _FP, np.int8)
    targets = np.concatenate([objects, difficult]).astype(np.float64)
    if len(boxes) == 0 or len(targets) == 0:
        return outcome
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(targets)).numpy()
    best = iou.argmax(axis=1)
    hit = iou[np.arange(len(boxes)), best] >= iou_threshold
    outcome[hit & (best >= len(objects))] = _IGNORED
    on_object = np.flatnonzero(hit & (best < len(objects)))
    _, first = np.unique(best[on_object], return_index=True)
    outcome[on_object[first]] = _TP
    return outcome


def _pr_curve(scores: np.ndarray, is_tp: np.ndarray, num_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each detection, detections taken by descending score."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    return tp / num_objects, tp / (tp + fp)


def _precision_envelope(precision: np.ndarray) -> np.ndarray:
    """Interpolated precision: at each point, the best precision at this recall or beyond."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def area_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point AP (VOC2010+): area under the interpolated precision-recall curve."""
    steps = np.diff(recall, prepend=0.0)
    return float(np.sum(steps * _precision_envelope(precision)))


def eleven_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 AP: mean over recall 0, 0.1, ..., 1 of the best precision at that recall or beyond
    (0 where that recall is never reached)."""
    first_reaching = np.searchsorted(recall, np.linspace(0.0, 1.0, 11), side="left")
    return float(np.append(_precision_envelope(precision), 0.0)[first_reaching].mean())


def voc_metrics(
    index: DatasetIndex, predictions: Predictions, iou_threshold: float = 0.5
) -> dict[str, float]:
    """{"VOC07_mAP": 11-point mAP, "mAP": all-point mAP, "AP/<class name>": all-point AP per class}.

    Only classes with at least one non-difficult object get an "AP/" entry and enter the means;
    when no class has one, both means are -1.0 (COCO's "no ground truth" convention).
    Images absent from `predictions` have no detections.
    """
    arrays = prediction_arrays(index, predictions)
    names = index.class_names()
    per_class_area, per_class_eleven = {}, []
    for label in range(1, index.num_classes + 1):
        scores, outcomes, num_objects = [np.zeros(0)], [np.zeros(0, np.int8)], 0
        for record in index.records:
            objects = record.boxes[record.labels == label]
            num_objects += len(objects)
            if record.image_id not in arrays:
                continue
            boxes, image_scores, labels = arrays[record.image_id]
            order = np.flatnonzero(labels == label)
            order = order[np.argsort(-image_scores[order], kind="stable")]
            difficult = record.ignore_boxes[record.ignore_labels == label]
            scores.append(image_scores[order])
            outcomes.append(_match_image(boxes[order], objects, difficult, iou_threshold))
        if num_objects == 0:
            continue
        outcome = np.concatenate(outcomes)
        counted = outcome != _IGNORED
        recall, precision = _pr_curve(np.concatenate(scores)[counted], outcome[counted] == _TP, num_objects)
        per_class_area[f"AP/{names[label - 1]}"] = area_ap(recall, precision)
        per_class_eleven.append(eleven_point_ap(recall, precision))
    if not per_class_area:
        return {"VOC07_mAP": -1.0, "mAP": -1.0}
    return {
        "VOC07_mAP": float(np.mean(per_class_eleven)),
        "mAP": float(np.mean(list(per_class_area.values()))),
        **per_class_area,
    }
