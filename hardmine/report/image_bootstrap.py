"""COCO AP on resampled validation sets: the bootstrap over images behind `hardmine compare`'s
confidence intervals.

A bootstrap replicate draws as many images as the validation set has, with replacement, and scores
each run's detections on that multiset. COCO AP is not a mean over images (it ranks the detections
of all images together), so the replicate's AP has to be accumulated again, not averaged:

1. faster-coco-eval evaluates every (category, image) pair once (`separate_eval=True`: matching of
   the detections to the ground truth at the ten IoU thresholds, area range "all", 100 detections
   per image) and keeps these per-image evaluations;
2. a replicate is the evaluator's own `accumulate` over the list of per-image evaluations in which
   an image drawn k times appears k times. That is exactly the AP of a dataset in which the image
   is copied k times (tests/report/test_image_bootstrap.py checks it against copied images): its
   detections and its ground truth count k times, ties between copies are ranked as the evaluator
   ranks them.

Matching runs once per run; a replicate only re-ranks and re-counts: 1.6 ms on 100 images, 5
classes and 3,085 detections, where a full evaluation of the same detections takes 44 ms. Every
run of a comparison is scored on the same replicates (`image_samples` with a fixed seed), which is
what makes the differences between runs paired.
"""

from __future__ import annotations

import copy
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval import faster_eval_api_cpp as coco_cpp

from hardmine.data.records import DatasetIndex
from hardmine.engine.coco_eval import coco_ground_truth
from hardmine.errors import DataError

#: Bootstrap replicates of a comparison, and the seed of the image draws (fixed: every run, every
#: re-run of the report and every racing decision sees the same replicates).
REPLICATES = 1000
SAMPLE_SEED = 0


def _silent(*_args: object, **_kwargs: object) -> None:
    """Discard the evaluator's progress lines."""


def image_samples(num_images: int, replicates: int = REPLICATES, seed: int = SAMPLE_SEED) -> np.ndarray:
    """`replicates` draws of `num_images` image positions (0..num_images - 1) with replacement, as
    an int array [replicates, num_images]; the same arguments give the same draws."""
    return np.random.default_rng(seed).integers(0, num_images, size=(replicates, num_images))


@dataclass
class PerImageEvaluation:
    """One run's detections matched to the ground truth image by image (faster-coco-eval's
    per-image evaluations, category-major), ready to be accumulated for any multiset of images.

    `image_ids`: the validation images in the evaluator's order (sorted ids); positions in a
    sample refer to this order.
    """

    image_ids: tuple[int, ...]
    _evaluations: list[Any]
    _params: Any
    _num_categories: int

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def ap(self, sample: Sequence[int] | np.ndarray | None = None) -> float:
        """COCO AP (IoU 0.5:0.95, all areas, 100 detections per image) of the multiset of images at
        the positions `sample` (all images, once each, when None); NaN when no image of the sample
        has ground truth (COCO's -1)."""
        positions = np.arange(self.num_images) if sample is None else np.asarray(sample, dtype=np.int64)
        if positions.size == 0:
            return float("nan")
        # the evaluations are category-major: category k's evaluation of image i is at k * I + i
        flat = (np.arange(self._num_categories)[:, None] * self.num_images + positions[None, :]).ravel()
        picked = operator.itemgetter(*flat.tolist())(self._evaluations)
        evaluations = list(picked) if flat.size > 1 else [picked]
        params = copy.copy(self._params)
        params.imgIds = [self.image_ids[int(i)] for i in positions]
        precision = np.asarray(coco_cpp.COCOevalAccumulate(params, evaluations)["precision"])
        valid = precision[precision > -1]
        return float(valid.mean()) if valid.size else float("nan")

    def replicates(self, samples: np.ndarray) -> np.ndarray:
        """AP of every row of `samples` ([replicates, images] positions, `image_samples`)."""
        return np.array([self.ap(row) for row in samples], dtype=np.float64)


def per_image_evaluation(index: DatasetIndex, results: list[dict[str, Any]]) -> PerImageEvaluation:
    """Match COCO `results` (image_id, category_id, bbox xywh, score; `to_coco_results`) to the
    ground truth of `index`, image by image. Images without results count as images without
    detections."""
    gt = COCO(coco_ground_truth(index), print_function=_silent)
    dt = gt.loadRes(results)
    evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=_silent, separate_eval=True)
    params = evaluator.params
    params.areaRng, params.areaRngLbl, params.maxDets = [params.areaRng[0]], ["all"], [100]
    evaluator.evaluate()
    evaluations = getattr(evaluator, "_evalImgs_cpp", None)
    if evaluations is None:  # faster-coco-eval keeps them under this name since 1.6
        raise RuntimeError("this faster-coco-eval does not keep its per-image evaluations (_evalImgs_cpp)")
    image_ids = tuple(int(i) for i in evaluator._paramsEval.imgIds)
    return PerImageEvaluation(
        image_ids, list(evaluations), evaluator._paramsEval, len(evaluator._paramsEval.catIds)
    )


def read_detections(path: Path, index: DatasetIndex) -> list[dict[str, Any]]:
    """A run's detections file (a COCO results list); DataError if it is unreadable or names an
    image the validation set lacks (it was then written for other data)."""
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the detections: {exc}") from None
    if not isinstance(results, list):
        raise DataError(f"{path}: expected a list of COCO results, got {type(results).__name__}")
    known = {record.image_id for record in index.records}
    unknown = sorted({int(r["image_id"]) for r in results} - known)
    if unknown:
        raise DataError(
            f"{path}: detections for image id {unknown[0]}, which the validation set {index.source} lacks"
        )
    return results
