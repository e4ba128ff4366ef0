"""What a training run reads, and in which order.

`load_training_data` checks and loads both splits (`data.check`, `data.on_invalid`), Fast R-CNN's
proposals and the mined hard negatives of `mining.file`. `training_loader` yields the batches of
iterations start..max_iter - 1, where iteration t's batch is a pure function of (seed, t): epoch e
visits the images in the order of a permutation seeded by (seed, e), and the augmentation (and
mixup partner) of image i in epoch e is seeded by (seed, e, i). A resumed run therefore sees exactly
the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from hardmine import distributed
from hardmine.config import Config
from hardmine.data.dataset import DetectionDataset, collate_detection
from hardmine.data.records import DatasetIndex
from hardmine.data.sources import load_checked_splits
from hardmine.engine.mining import load_hard_negatives
from hardmine.engine.proposals import load_split_proposals
from hardmine.engine.tasks import task_of
from hardmine.errors import HardmineError


@dataclass
class TrainingData:
    """Both splits, checked; Fast R-CNN's training proposals and the mined regions, where configured."""

    train: DatasetIndex
    val: DatasetIndex
    proposals: dict[int, Tensor] | None
    hard_negatives: dict[int, Tensor] | None


def _silent(text: str) -> None:
    """Swallows messages that another process prints already."""


def load_training_data(cfg: Config, run: distributed.ProcessContext) -> TrainingData:
    """The data of a run, both splits checked first (rank 0 first: it may generate the built-in
    dataset, which the others then read; it alone prints the warnings)."""
    masks = task_of(cfg).masks  # segmentation: the semantic masks are read and checked too
    with distributed.main_process_first("the data check"):
        quiet = {} if run.is_main else {"say": _silent}
        train, val = load_checked_splits(cfg.data, masks=masks, **quiet)
    proposals = load_split_proposals(cfg, "train", train)
    hard_negatives = load_hard_negatives(cfg.mining.file, train) if cfg.mining.file else None
    return TrainingData(train, val, proposals, hard_negatives)


class EpochIndexed(Dataset):
    """Wraps a DetectionDataset (or a SegmentationDataset) so each sample index carries its epoch
    (seeds its augmentation)."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches for iterations `start`..`stop - 1`; iteration t's batch depends only on (seed, t).

    In a distributed run (`world_size` processes) the global batch of iteration t holds
    `batch_size` x `world_size` images, exactly the batch one process with that batch size would
    draw, and process `rank` takes the `rank`-th slice of `batch_size` images of it. This plays the
    role of torch's `DistributedSampler`, which is epoch-based (it cannot start mid-epoch at an
    exact iteration) and does not make the processes' batches add up to the single-process batch.
    """

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_images == 0:
            raise HardmineError("the training set has no images")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.start, self.stop = start, stop
        self.rank, self.world_size = rank, world_size
        self.global_batch_size = batch_size * world_size
        self.per_epoch = max(num_images // self.global_batch_size, 1)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def _order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_images, generator=gen).tolist()
        while len(order) < self.global_batch_size:  # tiny datasets: repeat to fill one batch
            order += order
        return order

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, []
        size = self.global_batch_size
        for it in range(self.start, self.stop):
            e, pos = divmod(it, self.per_epoch)
            if e != epoch:
                epoch, order = e, self._order(e)
            batch = order[pos * size : (pos + 1) * size]
            yield [(e, i) for i in batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]]


def training_loader(
    cfg: Config, data: TrainingData, start: int, run: distributed.ProcessContext
) -> DataLoader:
    """This process's slices of the global batches (data.batch_size x processes images) of
    iterations `start`..solver.max_iter - 1, augmented as `data` says."""
    batches = IterationBatchSampler(
        len(data.train.records),
        cfg.data.batch_size,
        cfg.train.seed,
        start,
        cfg.solver.max_iter,
        rank=run.rank,
        world_size=run.world_size,
    )
    # detection: boxes (mixup, proposals, mined regions); segmentation: the masks too
    dataset = task_of(cfg).training_dataset(
        cfg, data.train, data.proposals, data.hard_negatives, batches.per_epoch
    )
    return DataLoader(
        EpochIndexed(dataset),
        batch_sampler=batches,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_detection,
        persistent_workers=False,
        # Its own generator: creating the iterator must not draw from the global RNG, which the
        # checkpoint restores (else a resumed run would sample differently).
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
