"""The semantic segmentation model: a head of torchvision's (`FCNHead`, `DeepLabHead`) on one level
of a hardmine backbone's FPN, its logits upsampled to the input, trained with a pixel loss reduced
over the pixels a pixel sampler keeps.

It follows the detectors' call convention, so the same engine trains it: `model(images, targets)`
returns `{"loss_seg": loss}` in training and a list of `{"mask": labels [H, W]}` (original image
size) in evaluation. Images go through the detectors' transform (resize to `model.min_size`, capped
at `model.max_size`, ImageNet normalisation, zero-padded batch; random shapes set its size); each
target's "mask" (uint8/int64 [H, W], 0 background, 1..C, 255 ignore) is resized to its image with
nearest neighbours and padded with 255, so padding never counts. The loss is computed at the input
resolution, after the logits are upsampled bilinearly from the head's stride (as torchvision's
segmentation models and mmsegmentation do); predictions are upsampled once more to each image's
original size before the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmine.data.masks import IGNORE_LABEL
from hardmine.models.transform import DetectionTransform
from hardmine.segmentation.pixel_losses import ClassPixelCounts, PixelLoss
from hardmine.segmentation.pixel_sampling import PixelSampler, SampledPixelLoss, pixel_stats

#: The model's key in the heads' diagnostics of log.csv (`seg/num_kept`, `seg/fg_loss_share`, ...).
HEAD_NAME = "seg"


@dataclass(frozen=True)
class PixelSelection:
    """What the sampler keeps on one image, at the model's input size (h, w): the target (255
    ignored), the prediction, each pixel's loss and the keep mask, all [h, w] on the CPU, and the
    selection's diagnostics (`SampledPixelLoss.last_stats` keys)."""

    target: Tensor
    prediction: Tensor
    loss: Tensor
    keep: Tensor
    stats: dict[str, float]


class WeightedPixelLoss(nn.Module):
    """A `PixelLoss` declaration as a module; a weighted one (class-balanced) keeps its class
    weights in the buffer `class_weight`, so they move with the model and go into checkpoints."""

    def __init__(self, loss: PixelLoss, num_classes: int) -> None:
        super().__init__()
        self.declaration = loss
        self.class_weight: Tensor | None
        if loss.weighted:
            self.register_buffer("class_weight", torch.ones(num_classes + 1))
        else:
            self.class_weight = None

    def fit(self, counts: ClassPixelCounts) -> None:
        """Set the class weights from the training masks' pixel counts (weighted losses only)."""
        if self.class_weight is not None:
            self.class_weight.copy_(self.declaration.class_weights(counts))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.declaration(logits, target, self.class_weight)


class SegmentationModel(nn.Module):
    """`backbone` (a hardmine FPN backbone) -> level `feature` -> `head` ([N, C + 1, h, w] logits)
    -> bilinear upsampling to the input; trained with `loss` over the pixels `sampler` keeps.

    `normalizer`: "kept" divides the kept pixels' summed loss by their number, "all" by the number
    of pixels of the batch (mmsegmentation's default). After each training forward `last_stats`
    holds `SampledPixelLoss.last_stats` (kept pixels, fg loss share, ...; `diagnostics`)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        transform: DetectionTransform,
        loss: PixelLoss,
        sampler: PixelSampler,
        num_classes: int,
        feature: str = "0",
        normalizer: str = "kept",
    ) -> None:
        super().__init__()
        if normalizer not in ("kept", "all"):
            raise ValueError(f"normalizer must be 'kept' or 'all', got {normalizer!r}")
        self.backbone, self.head, self.transform = backbone, head, transform
        self.criterion = SampledPixelLoss(WeightedPixelLoss(loss, num_classes), sampler)
        self.num_classes, self.feature, self.normalizer = num_classes, feature, normalizer
        self.last_stats: dict[str, float] = {}

    @property
    def sampler(self) -> PixelSampler:
        return self.criterion.sampler

    def fit_class_weights(self, counts: ClassPixelCounts) -> None:
        """Class weights of a class-balanced loss from the training masks (no effect otherwise)."""
        self.criterion.loss.fit(counts)

    def diagnostics(self) -> dict[str, float]:
        """The last training forward's pixel statistics, as `seg/KEY` (log.csv columns)."""
        return {f"{HEAD_NAME}/{key}": value for key, value in self.last_stats.items()}

    def logits(self, batch: Tensor) -> Tensor:
        """[N, C + 1, H, W] logits of a normalised, padded batch [N, 3, H, W], at its size."""
        features = self.backbone(batch)[self.feature]
        logits = self.head(features)
        return F.interpolate(logits, size=batch.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def select_pixels(self, image: Tensor, mask: Tensor) -> PixelSelection:
        """The pixels the sampler keeps on one image (float [3, H, W] in [0, 1]) with its mask
        ([H, W], 255 ignored), as the model stands (inference mode: test size, no dropout); the
        mode is restored after."""
        was_training = self.training
        self.eval()
        try:
            batch, _ = self.transform([image])
            logits = self.logits(batch.tensors)
            target = batch_masks(
                [{"mask": mask.to(logits.device)}], batch.image_sizes, tuple(logits.shape[-2:])
            )
            loss = self.criterion.loss(logits, target)
            keep = self.sampler(logits, target, loss)
            stats = pixel_stats(loss, keep, target, self.sampler.ignore_index)
        finally:
            self.train(was_training)
        h, w = batch.image_sizes[0]
        return PixelSelection(
            target=target[0, :h, :w].cpu(),
            prediction=logits[0, :, :h, :w].argmax(dim=0).cpu(),
            loss=loss[0, :h, :w].float().cpu(),
            keep=keep[0, :h, :w].cpu(),
            stats=stats,
        )

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("a segmentation model in training needs targets with a 'mask'")
        original = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets if self.training else None)
        logits = self.logits(batch.tensors)
        if self.training:
            assert targets is not None
            target = batch_masks(targets, batch.image_sizes, tuple(batch.tensors.shape[-2:]))
            avg_factor = target.numel() if self.normalizer == "all" else None
            loss = self.criterion(logits, target, avg_factor=avg_factor)
            self.last_stats = dict(self.criterion.last_stats)
            return {"loss_seg": loss}
        return [
            {"mask": upsample_to(logits[i : i + 1, :, :h, :w], size).argmax(dim=1)[0]}
            for i, ((h, w), size) in enumerate(zip(batch.image_sizes, original))
        ]


def upsample_to(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of [N, K, h, w] logits to `size` (H, W); unchanged when already that size."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def batch_masks(
    targets: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]], batch_size: tuple[int, int]
) -> Tensor:
    """The targets' masks as one int64 [N, H, W] tensor of the padded batch's size: each resized to
    its image's size (nearest neighbours, as its image was resized) and padded with 255."""
    missing = [i for i, target in enumerate(targets) if "mask" not in target]
    if missing:
        raise ValueError(f"target {missing[0]} has no 'mask'; a segmentation model trains on semantic masks")
    device = targets[0]["mask"].device
    out = torch.full((len(targets), *batch_size), IGNORE_LABEL, dtype=torch.int64, device=device)
    for i, (target, (h, w)) in enumerate(zip(targets, image_sizes)):
        mask = target["mask"]
        if tuple(mask.shape) != (h, w):
            mask = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        out[i, :h, :w] = mask.long()
    return out
