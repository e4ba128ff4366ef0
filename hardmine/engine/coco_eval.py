"""COCO-style detection metrics, computed by faster-coco-eval on ground truth built in memory, and
the files results are kept in: COCO results JSON, metrics.json, the IoU-0.5 precision-recall curve
(pr50.json). `hardmine.engine.voc_eval` computes the VOC metrics, `hardmine.engine.evaluation` runs
a model and picks the metric set.

Predictions throughout hardmine map the dataset's image id to {"boxes": float [K, 4] xyxy in
original image pixels, "scores": float [K], "labels": int [K] contiguous labels 1..C}; torch
tensors and numpy arrays are both accepted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from torch import Tensor

from hardmine.data.records import DatasetIndex

ArrayLike = Tensor | np.ndarray
Predictions = Mapping[int, Mapping[str, ArrayLike]]

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")

# faster-coco-eval's summary names for the default maxDets (1, 10, 100): "AR_third" is AR@100.
_EVALUATOR_KEYS = {
    "AP": "AP_all",
    "AP50": "AP_50",
    "AP75": "AP_75",
    "APs": "AP_small",
    "APm": "AP_medium",
    "APl": "AP_large",
    "AR100": "AR_third",
}


def _to_numpy(value: ArrayLike) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def prediction_arrays(
    index: DatasetIndex, predictions: Predictions
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Predictions as numpy (boxes float64 [K, 4], scores float64 [K], labels int64 [K]) per image id.

    Checked here once so every metric fails the same way: an image id the index does not know, a
    label outside 1..C or inconsistent lengths raise ValueError naming the image.
    """
    known = {record.image_id for record in index.records}
    arrays = {}
    for raw_id, pred in predictions.items():
        image_id = int(raw_id)
        if image_id not in known:
            raise ValueError(f"prediction for image id {image_id}, which is not in the dataset")
        boxes = _to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _to_numpy(pred["scores"]).astype(np.float64).reshape(-1)
        labels = _to_numpy(pred["labels"]).astype(np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image id {image_id}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels"
            )
        if labels.size and (labels.min() < 1 or labels.max() > index.num_classes):
            raise ValueError(f"image id {image_id}: labels must be in 1..{index.num_classes}, got {labels}")
        arrays[image_id] = (boxes, scores, labels)
    return arrays


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def to_coco_results(index: DatasetIndex, predictions: Predictions) -> list[dict[str, Any]]:
    """COCO result entries {image_id, category_id, bbox [x, y, w, h], score}, one per detection.

    `category_id` is the dataset's own id (via the label map), so the list can be scored by any COCO
    tool against the original annotation file. Boxes are rounded to 0.01 px and scores to 6
    significant digits: far below what changes an IoU or a ranking, and it keeps the JSON small.
    """
    label_to_id = index.label_to_category_id()
    results = []
    for image_id, (boxes, scores, labels) in prediction_arrays(index, predictions).items():
        for box, score, label in zip(_xywh(boxes).round(2).tolist(), scores.tolist(), labels.tolist()):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": label_to_id[label],
                    "bbox": box,
                    "score": float(f"{score:.6g}"),
                }
            )
    return results


def coco_ground_truth(index: DatasetIndex) -> dict[str, Any]:
    """The index as a COCO annotation dict: every image (also those without objects), objects as
    iscrowd=0 and ignore regions (VOC difficult, COCO crowd) as iscrowd=1, so that detections on
    them count as neither true nor false positives. `area` is the box area (w * h), since masks
    are not kept; it decides the small/medium/large bins.
    """
    label_to_id = index.label_to_category_id()
    annotations = []
    for record in index.records:
        for boxes, labels, crowd in (
            (record.boxes, record.labels, 0),
            (record.ignore_boxes, record.ignore_labels, 1),
        ):
            xywh = _xywh(np.asarray(boxes, np.float64).reshape(-1, 4))
            for box, label in zip(xywh.tolist(), np.asarray(labels).reshape(-1).tolist()):
                annotations.append(
                    {
                        "id": len(annotations) + 1,  # ids start at 1: the evaluator reads 0 as "unmatched"
                        "image_id": record.image_id,
                        "category_id": label_to_id[label],
                        "bbox": box,
                        "area": box[2] * box[3],
                        "iscrowd": crowd,
                    }
                )
    return {
        "images": [
            {"id": r.image_id, "file_name": r.file_name, "width": r.width, "height": r.height}
            for r in index.records
        ],
        "annotations": annotations,
        "categories": [{"id": c.id, "name": c.name} for c in index.categories],
    }


def _silent(*_args: object, **_kwargs: object) -> None:
    """Discard the evaluator's progress and summary lines."""


#: File name of the precision-recall curve a training run writes next to metrics.json.
PR_CURVE_FILE = "pr50.json"


@dataclass
class PRCurve:
    """COCO's interpolated precision at its 101 recall thresholds, at IoU 0.5, all object sizes,
    up to 100 detections per image: `precision` is the mean over the classes that have ground
    truth (empty when none has), `per_class` each such class's curve by name. It is the curve
    whose mean is AP50, kept so reports can plot it."""

    recall: list[float]
    precision: list[float]
    per_class: dict[str, list[float]]


def _pr_curve_50(evaluator: COCOeval_faster, index: DatasetIndex) -> PRCurve:
    """The IoU-0.5 curve from the evaluator's accumulated precision [IoU, recall, class, area, maxDets]."""
    precision = np.asarray(evaluator.eval["precision"])[
        int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - 0.5))), :, :, 0, -1
    ]
    names = {c.id: c.name for c in index.categories}
    per_class = {
        names[int(cat_id)]: precision[:, k].round(6).tolist()
        for k, cat_id in enumerate(evaluator.params.catIds)
        if (precision[:, k] >= 0).all()  # -1: no ground truth of that class
    }
    mean = np.mean(list(per_class.values()), axis=0).round(6).tolist() if per_class else []
    return PRCurve(
        recall=np.asarray(evaluator.params.recThrs).round(6).tolist(), precision=mean, per_class=per_class
    )


def coco_evaluation(
    index: DatasetIndex, predictions: Predictions, verbose: bool = False
) -> tuple[dict[str, float], PRCurve]:
    """COCO box metrics (see `coco_metrics`) and the precision-recall curve at IoU 0.5 (`PRCurve`)."""
    say = print if verbose else _silent
    gt = COCO(coco_ground_truth(index), print_function=say)
    dt = gt.loadRes(to_coco_results(index, predictions))
    evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=say)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    metrics = {key: float(stats[name]) for key, name in _EVALUATOR_KEYS.items()}
    return metrics, _pr_curve_50(evaluator, index)


def coco_metrics(index: DatasetIndex, predictions: Predictions, verbose: bool = False) -> dict[str, float]:
    """COCO box metrics (keys METRIC_KEYS, values in [0, 1]) from faster-coco-eval.

    Images absent from `predictions` count as images with no detections; a prediction for an
    image id the index lacks raises ValueError. A metric is -1.0, as in COCO, when no ground truth
    falls in its range (e.g. APs on a dataset without small objects, or every metric on a dataset
    without objects). `verbose` prints the evaluator's usual summary.
    """
    return coco_evaluation(index, predictions, verbose)[0]


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """A two-row text table of the metrics as percentages with one decimal, columns aligned.

    COCO's -1 ("no ground truth in that range") is shown as "-" rather than as -100.0.
    """
    names = list(metrics)
    values = [f"{100.0 * metrics[name]:.1f}" if metrics[name] >= 0 else "-" for name in names]
    widths = [max(len(n), len(v)) for n, v in zip(names, values)]
    header = "  ".join(n.rjust(w) for n, w in zip(names, widths))
    row = "  ".join(v.rjust(w) for v, w in zip(values, widths))
    return f"{header}\n{row}"


def _write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write to a temporary file beside `path`, then rename: readers never see a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A plain open (not mkstemp) so the file gets the usual umask permissions, not 0600.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_metrics_json(
    path: str | os.PathLike[str], metrics: Mapping[str, float], extra: Mapping[str, Any] | None = None
) -> Path:
    """Write one flat JSON object: the metrics, then the `extra` entries (run name, checkpoint, ...).

    Keys keep the names and order they are given in; an `extra` key that repeats a metric name is
    a ValueError rather than a silent overwrite. Written atomically; returns the path.
    """
    extra = extra or {}
    clash = sorted(set(metrics) & set(extra))
    if clash:
        raise ValueError(f"extra keys {clash} repeat metric names")
    payload = {**{k: float(v) for k, v in metrics.items()}, **extra}
    return _write_atomic(path, json.dumps(payload, indent=2) + "\n")


def write_pr_curve_json(path: str | os.PathLike[str], curve: PRCurve) -> Path:
    """Write `curve` as JSON ({"iou": 0.5, "recall", "precision", "per_class"}), atomically."""
    return _write_atomic(path, json.dumps({"iou": 0.5, **asdict(curve)}) + "\n")


def read_pr_curve_json(path: str | os.PathLike[str]) -> PRCurve:
    """The curve `write_pr_curve_json` wrote."""
    data = json.loads(Path(path).read_text())
    return PRCurve(recall=data["recall"], precision=data["precision"], per_class=data["per_class"])


def write_coco_results(path: str | os.PathLike[str], index: DatasetIndex, predictions: Predictions) -> Path:
    """Write the COCO results list (see `to_coco_results`) as JSON, atomically; returns the path."""
    return _write_atomic(path, json.dumps(to_coco_results(index, predictions)))
