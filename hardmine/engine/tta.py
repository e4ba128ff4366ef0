"""Multi-scale and horizontal-flip testing: several inference passes per image, merged per class.

Each pass runs the detector with its transform resized to one shorter-side size of `scales`
(the longer-side cap scaled in proportion, so the cap does not undo the scale), on the image as
it is or mirrored; Fast R-CNN proposals are mirrored with the image and resized by the model's
transform like the image. The model maps every pass's boxes back to original image pixels; a
mirrored pass's boxes are mirrored back. The passes' detections of each image are then merged
(`hardmine.models.merge`): per-class NMS at `merge_iou` ("nms"), or NMS followed by box voting
with the boxes overlapping at IoU >= `vote_iou` ("vote", MR-CNN / the OHEM paper), keeping the
best `max_detections`. Cost: one full forward pass per (scale, flip).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hardmine.config import EvalConfig
from hardmine.models.merge import MERGE_METHODS, concat_detections, merge_detections
from hardmine.models.transform import DetectionTransform, scaled_max_size


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Which passes to run and how to merge them (the `eval` options of the same names).

    scales: shorter image sides to test at; () = the model's own size only.
    hflip:  also run each scale on the mirrored image.
    merge:  "nms" or "vote" (NMS, then box voting).
    merge_iou, vote_iou, max_detections: see the module docstring.
    """

    scales: tuple[int, ...] = ()
    hflip: bool = False
    merge: str = "nms"
    merge_iou: float = 0.5
    vote_iou: float = 0.5
    max_detections: int = 100

    def __post_init__(self) -> None:
        if any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive sizes, got {list(self.scales)}")
        if self.merge not in MERGE_METHODS:
            raise ValueError(f"merge must be one of {MERGE_METHODS}, got {self.merge!r}")
        for name in ("merge_iou", "vote_iou"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.max_detections <= 0:
            raise ValueError(f"max_detections must be > 0, got {self.max_detections}")

    @classmethod
    def from_config(cls, cfg: EvalConfig) -> TestTimeAugmentation:
        return cls(
            scales=tuple(cfg.scales),
            hflip=cfg.hflip,
            merge=cfg.merge,
            merge_iou=cfg.merge_iou,
            vote_iou=cfg.vote_iou,
            max_detections=cfg.max_detections,
        )

    @property
    def enabled(self) -> bool:
        """False when there is nothing to merge: the model's own single pass."""
        return bool(self.scales) or self.hflip

    @property
    def num_passes(self) -> int:
        return max(len(self.scales), 1) * (2 if self.hflip else 1)


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes (x1, y1, x2, y2) of an image `width` pixels wide, mirrored left-right."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


@contextmanager
def resized_to(transform: DetectionTransform, size: int | None) -> Iterator[None]:
    """Run `transform` at shorter side `size` (None = unchanged), its longer-side cap scaled in
    proportion to its own shorter side; restored on exit."""
    if size is None:
        yield
        return
    min_size, max_size = transform.min_size, transform.max_size
    transform.min_size = (size,)
    transform.max_size = scaled_max_size(max_size, size, min_size[-1])
    try:
        yield
    finally:
        transform.min_size, transform.max_size = min_size, max_size


def _model_transform(model: nn.Module) -> DetectionTransform:
    transform = getattr(model, "transform", None)
    if not isinstance(transform, DetectionTransform):
        raise ValueError(
            f"multi-scale / flip testing needs a hardmine detector (with a DetectionTransform as "
            f".transform); got {type(model).__name__}"
        )
    return transform


@torch.no_grad()
def predict_tta(
    model: nn.Module,
    images: list[Tensor],
    tta: TestTimeAugmentation,
    proposals: list[Tensor] | None = None,
) -> list[dict[str, Tensor]]:
    """Detections per image in original pixels, merged over every (scale, flip) pass of `tta`.

    `model` is a hardmine detector in eval mode; `proposals` (one [P, 4] tensor per image,
    original pixels) feed a Fast R-CNN model.
    """
    transform = _model_transform(model)
    widths = [int(img.shape[-1]) for img in images]
    passes: list[list[dict[str, Tensor]]] = [[] for _ in images]
    for size in tta.scales or (None,):
        for flip in (False, True) if tta.hflip else (False,):
            inputs = [img.flip(-1) for img in images] if flip else images
            boxes = proposals
            if flip and proposals is not None:
                boxes = [hflip_boxes(p, w) for p, w in zip(proposals, widths)]
            with resized_to(transform, size):
                results = model(inputs) if boxes is None else model(inputs, proposals=boxes)
            for per_image, result, width in zip(passes, results, widths):
                if flip:
                    result = {**result, "boxes": hflip_boxes(result["boxes"], width)}
                per_image.append(result)
    vote_iou = tta.vote_iou if tta.merge == "vote" else None
    return [
        merge_detections(*concat_detections(dets), tta.merge_iou, tta.max_detections, vote_iou=vote_iou)
        for dets in passes
    ]
