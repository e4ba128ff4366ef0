"""The torch `Dataset` over a `DatasetIndex`: image loading, targets and seeded augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from hardmine.data.mixup import MixupOptions, draw_mixup, mixup_pair
from hardmine.data.records import DatasetIndex, ImageRecord
from hardmine.data.transforms import AugmentOptions, build_eval_transforms, build_train_transforms
from hardmine.errors import DataError

Target = dict[str, Tensor]


def load_image(path: Path, record: ImageRecord) -> tv_tensors.Image:
    """Decode `path` as an RGB uint8 [3, H, W] image and check its size against `record`.

    Grayscale, palette and RGBA files are converted to RGB (alpha is dropped). Any read failure
    becomes a DataError naming the file and the image id.
    """
    where = f"{path} (image id {record.image_id})"
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{where}: image file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot read image: {exc}") from None
    if rgb.size != (record.width, record.height):
        raise DataError(
            f"{where}: decoded image is {rgb.width}x{rgb.height} but the annotations say "
            f"{record.width}x{record.height}"
        )
    return tv_tensors.Image(F.pil_to_tensor(rgb))


def _boxes(values: Tensor, canvas: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """xyxy float32 boxes that v2 transforms move with an image of size `canvas` (H, W); copies `values`."""
    return tv_tensors.BoundingBoxes(values.clone(), format="XYXY", canvas_size=canvas, dtype=torch.float32)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 64-bit seed from (seed, epoch, index), all non-negative."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


class DetectionDataset(Dataset[tuple[Tensor, Target]]):
    """Images at their original size with their targets; seeded augmentation and mixup in train mode.

    An item is `(image, target)`: image float32 [3, H, W] in [0, 1]; target "boxes" float32 [N, 4]
    (xyxy pixels), "labels" int64 [N] (1..C), "ignore_boxes" float32 [M, 4], "image_id" int64 [],
    and, when `proposals` (image id -> [P, 4] boxes, for Fast R-CNN) is given, "proposals" float32
    [P, 4], moved together with the image; when `hard_negatives` (image id -> [H, 4] mined regions,
    see `hardmine.engine.mining`) is given, "hard_negatives" float32 [H, 4] (empty for images
    without any), moved likewise. A mixed item (`mixup`, train mode only) is the blend of the item's
    image with a partner's (`hardmine.data.mixup`): all its entries hold both images' boxes, plus
    "weights" float32 [N] (lam for the item's own boxes, 1 - lam for the partner's); "image_id" is
    the item's own.

    Augmentation (`hflip_prob` and `augment`, see `hardmine.data.transforms`) runs after mixup, once
    on the blend. Mixup's draws and the augmentation take torch's RNG seeded by (seed, epoch, index)
    inside `fork_rng`, so an item is the same whatever the worker count or process, and the caller's
    RNG is left untouched. Call `set_epoch` before each epoch's DataLoader iterator is created (with
    `persistent_workers` the workers keep the epoch they were started with).
    """

    def __init__(
        self,
        index: DatasetIndex,
        train: bool,
        hflip_prob: float = 0.5,
        seed: int = 0,
        proposals: dict[int, Tensor] | None = None,
        hard_negatives: dict[int, Tensor] | None = None,
        augment: AugmentOptions | None = None,
        mixup: MixupOptions | None = None,
    ) -> None:
        self.index = index
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.proposals = proposals
        self.hard_negatives = hard_negatives
        self.mixup = mixup if train else None
        self.transforms = build_train_transforms(hflip_prob, augment) if train else build_eval_transforms()
        if proposals is not None:
            missing = [r.image_id for r in index.records if r.image_id not in proposals]
            if missing:
                raise DataError(
                    f"{index.source}: no proposals for {len(missing)} image(s), e.g. image ids {missing[:5]}"
                )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index.records)

    def load(self, i: int) -> tuple[tv_tensors.Image, Target]:
        """Item `i` before augmentation: the uint8 image and its target with `BoundingBoxes` entries."""
        record = self.index.records[i]
        image = load_image(self.index.image_root / record.file_name, record)
        canvas = (record.height, record.width)
        target = {
            "boxes": _boxes(torch.from_numpy(record.boxes), canvas),
            "labels": torch.tensor(record.labels, dtype=torch.int64),
            "ignore_boxes": _boxes(torch.from_numpy(record.ignore_boxes), canvas),
            "image_id": torch.tensor(record.image_id, dtype=torch.int64),
        }
        if self.proposals is not None:
            target["proposals"] = _boxes(self.proposals[record.image_id], canvas)
        if self.hard_negatives is not None:
            mined = self.hard_negatives.get(record.image_id, torch.zeros((0, 4)))
            target["hard_negatives"] = _boxes(mined, canvas)
        return image, target

    def __getitem__(self, i: int) -> tuple[Tensor, Target]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, i))
            draw = draw_mixup(self.mixup, i, len(self), self.epoch) if self.mixup is not None else None
            image, target = self.load(i)
            if draw is not None:
                image, target = mixup_pair(image, target, *self.load(draw.partner), draw.lam)
            image, target = self.transforms(image, target)
        return image.as_subclass(Tensor), {k: v.as_subclass(Tensor) for k, v in target.items()}


def collate_detection(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Keep images (of different sizes) and targets as lists; the model batches them itself."""
    images, targets = zip(*batch)
    return list(images), list(targets)
