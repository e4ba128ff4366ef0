"""Boxes drawn on their image: detections as a PNG (one image, or a dataset's predictions), and the
building blocks of galleries (outlined box sets, faint or opaque, and a colour-coded legend), for quick
visual checks."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

from hardmine.data.records import DatasetIndex

Color = tuple[int, int, int]

GT_COLOR: Color = (255, 255, 255)
_GOLDEN_RATIO = 0.618033988749895


def class_color(label: int) -> Color:
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


def draw_predictions(
    index: DatasetIndex,
    predictions: Mapping[int, Mapping[str, Tensor]],
    out_dir: str | Path,
    score_thresh: float = 0.3,
    max_images: int | None = None,
) -> int:
    """`draw_detections` for the first `max_images` images of `index` (all with None), each to
    OUT_DIR/STEM.png; returns how many were drawn."""
    names = index.class_names()
    records = index.records if max_images is None else index.records[:max_images]
    for record in records:
        pred = predictions[record.image_id]
        draw_detections(
            index.image_root / record.file_name,
            pred["boxes"],
            pred["labels"],
            pred["scores"],
            names,
            Path(out_dir) / f"{Path(record.file_name).stem}.png",
            score_thresh=score_thresh,
        )
    return len(records)


def draw_boxes(
    image: Tensor | str | Path,
    boxes: Tensor | np.ndarray,
    color: Color,
    width: int = 1,
    opacity: float = 1.0,
) -> Tensor:
    """uint8 [3, H, W] `image` with `boxes` (xyxy pixels) outlined in `color`, `width` px inwards.

    Coordinates are rounded to the nearest pixel (not truncated), so a box mapped back from another
    scale lands on the pixels of the box it came from. `opacity` < 1 blends the outlines into the
    image, for faint context boxes under the ones that matter.
    """
    canvas = _load_image(image)
    boxes = _as_tensor(boxes).float().reshape(-1, 4).round()
    if not len(boxes):
        return canvas
    drawn = draw_bounding_boxes(canvas, boxes, colors=color, width=width)
    if opacity >= 1.0:
        return drawn
    return (canvas.float() * (1.0 - opacity) + drawn.float() * opacity).round().to(torch.uint8)


def draw_legend(image: Tensor | str | Path, lines: Sequence[tuple[str, Color]]) -> Image.Image:
    """`image` as an RGB PIL image with `lines` of text, each in its colour, on a translucent dark
    panel in the top-left corner; the image keeps its size (the panel covers what is under it)."""
    canvas = to_pil_image(_load_image(image)).convert("RGBA")
    font = ImageFont.load_default()
    pad, line_height = 3, font.getbbox("Ag")[3] + 2
    width = max((int(font.getlength(text)) for text, _ in lines), default=0) + 2 * pad
    panel = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    ImageDraw.Draw(panel).rectangle((0, 0, width, len(lines) * line_height + 2 * pad), fill=(0, 0, 0, 160))
    legend = Image.alpha_composite(canvas, panel).convert("RGB")
    draw = ImageDraw.Draw(legend)
    for i, (text, color) in enumerate(lines):
        draw.text((pad, pad + i * line_height), text, fill=color, font=font)
    return legend
