"""Detections drawn on their image as a PNG, for galleries and quick visual checks."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

GT_COLOR = (255, 255, 255)
_GOLDEN_RATIO = 0.618033988749895


def class_color(label: int) -> tuple[int, int, int]:
    """A saturated colour for a contiguous label; hues step by the golden ratio, so neighbouring
    labels get far-apart colours and none is white (kept for ground truth)."""
    r, g, b = colorsys.hsv_to_rgb((label * _GOLDEN_RATIO) % 1.0, 0.85, 0.95)
    return round(255 * r), round(255 * g), round(255 * b)


def _load_image(image: Tensor | str | Path) -> Tensor:
    """uint8 RGB [3, H, W] from a file (read with PIL: torchvision's decoders are deprecated), a
    uint8 tensor or a float tensor in [0, 1] (rounded, so 0.5 becomes 128)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as pil_image:
            return pil_to_tensor(pil_image.convert("RGB"))
    image = image.detach().cpu()
    if image.is_floating_point():
        image = (image.clamp(0.0, 1.0) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _as_tensor(values: Tensor | np.ndarray) -> Tensor:
    return values.detach().cpu() if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values))


def draw_detections(
    image: Tensor | str | Path,
    boxes: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    scores: Tensor | np.ndarray,
    class_names: Sequence[str],
    out_path: str | Path,
    score_thresh: float = 0.3,
    gt_boxes: Tensor | np.ndarray | None = None,
) -> Path:
    """Write `image` with its detections (score >= `score_thresh`) to `out_path` as PNG.

    Boxes are xyxy pixels; each is captioned "name 0.87" (`class_names[label - 1]`) in its class
    colour. Ground-truth boxes, if given, are drawn first in white, uncaptioned. Returns `out_path`.
    """
    canvas = _load_image(image)
    if gt_boxes is not None and len(gt_boxes):
        canvas = draw_bounding_boxes(canvas, _as_tensor(gt_boxes).float().reshape(-1, 4), colors=GT_COLOR)
    scores = _as_tensor(scores).float().reshape(-1)
    keep = scores >= score_thresh
    if keep.any():
        kept_labels = _as_tensor(labels).reshape(-1)[keep].tolist()
        canvas = draw_bounding_boxes(
            canvas,
            _as_tensor(boxes).float().reshape(-1, 4)[keep],
            labels=[f"{class_names[c - 1]} {s:.2f}" for c, s in zip(kept_labels, scores[keep].tolist())],
            colors=[class_color(c) for c in kept_labels],
            width=2,
            fill_labels=True,
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    to_pil_image(canvas).save(out_path, format="PNG")
    return out_path
