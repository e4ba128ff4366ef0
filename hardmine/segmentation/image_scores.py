"""Per-image confusion matrices of a segmentation evaluation, and the mIoU of any multiset of the
images: what `hardmine compare` resamples for its intervals over validation images (the
segmentation counterpart of the detections each detector evaluation keeps).

An evaluation during training writes `{"classes": [...], "images": {image id: [[...]]}}` (row =
true class, column = predicted class, pixels labelled 255 not counted; torchmetrics' confusion
matrix). The mIoU of a set of images sums their matrices: IoU_c = TP / (TP + FP + FN), averaged
over the classes whose union is not empty, as `SegmentationMetrics` (torchmetrics) does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix

from hardmine.data.masks import IGNORE_LABEL
from hardmine.engine.checkpoint import atomic_write


def image_confusion(prediction: Tensor, target: Tensor, num_labels: int) -> np.ndarray:
    """[K, K] int64 confusion matrix of one image's predicted labels against its target [H, W]
    (K = num_labels, background included; 255 ignored)."""
    matrix = multiclass_confusion_matrix(
        prediction.reshape(1, -1), target.reshape(1, -1), num_labels, ignore_index=IGNORE_LABEL
    )
    return matrix.to(torch.int64).numpy()


def miou(confusion: np.ndarray) -> np.ndarray:
    """mIoU of confusion matrices [..., K, K]: the mean IoU over the classes whose union is not
    empty (NaN where every union is empty)."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    union = confusion.sum(axis=-1) + confusion.sum(axis=-2) - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
    count = present.sum(axis=-1)
    return np.divide(iou.sum(axis=-1), count, out=np.full(count.shape, np.nan), where=count > 0)


@dataclass(frozen=True)
class ImageConfusions:
    """An evaluation's confusion matrix per image: `image_ids` (sorted) and `matrices` [n, K, K]."""

    image_ids: tuple[int, ...]
    matrices: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def miou(self) -> float:
        """The mIoU of the whole set."""
        return float(miou(self.matrices.sum(axis=0)))

    def replicates(self, samples: np.ndarray) -> np.ndarray:
        """The mIoU of each resampled set: `samples` [R, n] image positions (with repeats) -> [R]."""
        counts = np.stack([np.bincount(row, minlength=self.num_images) for row in samples])
        return miou(np.einsum("rn,nkl->rkl", counts, self.matrices))


def write_confusions(path: Path, confusions: dict[int, np.ndarray], class_names: list[str]) -> Path:
    """Write the per-image matrices (atomically), images in id order."""
    payload = {
        "classes": class_names,
        "images": {str(i): confusions[i].tolist() for i in sorted(confusions)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write(json.dumps(payload).encode())
    return path


def read_confusions(path: Path) -> ImageConfusions:
    """What `write_confusions` wrote."""
    images = json.loads(path.read_text())["images"]
    ids = sorted(int(i) for i in images)
    return ImageConfusions(tuple(ids), np.array([images[str(i)] for i in ids], np.int64))
