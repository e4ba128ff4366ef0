"""Running a segmentation model over a dataset: its predicted masks, and their mIoU, per-class IoU
and pixel accuracy (`SegmentationMetrics`, torchmetrics) against the dataset's masks.

In a distributed run every process predicts its shard of the images (every world_size-th one,
starting at its rank); torchmetrics sums the states over the processes when computing, so every
process returns the metrics of the whole set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hardmine import distributed
from hardmine.data.dataset import DetectionDataset, collate_detection
from hardmine.data.records import DatasetIndex
from hardmine.segmentation.dataset import SegmentationDataset
from hardmine.segmentation.image_scores import image_confusion, write_confusions
from hardmine.segmentation.metrics import BACKGROUND, SegmentationMetrics


@torch.no_grad()
def predicted_masks(
    model: nn.Module,
    index: DatasetIndex,
    device: torch.device,
    batch_size: int = 4,
    num_workers: int = 0,
    with_targets: bool = True,
) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """(image id, predicted labels int64 [H, W] on the CPU, the dataset's mask int64 [H, W] or None)
    of every image of `index`, in order, at the original size. `with_targets` reads the masks (the
    index must have been read with masks); without, loose images can be predicted."""
    dataset_cls = SegmentationDataset if with_targets else DetectionDataset
    loader = DataLoader(
        dataset_cls(index, train=False),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_detection,
    )
    was_training = model.training
    model.eval()
    try:
        for images, targets in loader:
            results = model([img.to(device) for img in images])
            for target, result in zip(targets, results):
                mask = target["mask"].long() if with_targets else None
                yield int(target["image_id"]), result["mask"].cpu(), mask
    finally:
        model.train(was_training)


def evaluate_segmentation(
    model: nn.Module,
    index: DatasetIndex,
    device: torch.device,
    batch_size: int = 4,
    num_workers: int = 0,
    confusions_path: Path | None = None,
) -> dict[str, float]:
    """`mIoU`, `pixel_accuracy` and `IoU/<class>` (background first) of `model` on `index` (read
    with masks); sharded over the processes of a distributed run. With `confusions_path`, each
    image's confusion matrix is written there (rank 0; `image_scores`), for `hardmine compare`'s
    intervals over validation images."""
    shard = index
    if distributed.is_distributed():
        rank, world = distributed.rank(), distributed.world_size()
        shard = dataclasses.replace(index, records=index.records[rank::world])
    metrics = SegmentationMetrics(index.class_names())
    confusions: dict[int, np.ndarray] = {}
    for image_id, prediction, target in predicted_masks(model, shard, device, batch_size, num_workers):
        assert target is not None
        metrics.update(prediction[None], target[None])
        if confusions_path is not None:
            confusions[image_id] = image_confusion(prediction, target, index.num_classes + 1)
    if confusions_path is not None:
        shards = distributed.gather_objects(confusions)
        if shards is not None:  # rank 0
            merged = {i: m for part in shards for i, m in part.items()}
            write_confusions(confusions_path, merged, [BACKGROUND, *index.class_names()])
    return metrics.compute()
