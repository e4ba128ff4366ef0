"""Semantic masks drawn: a predicted mask over its image (`hardmine predict`), and the pixels a
pixel sampler keeps (the comparison's gallery). Overlays are torchvision's
`draw_segmentation_masks`; each label has the colour `draw.class_color` gives it in box drawings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_segmentation_masks

from hardmine.data.masks import IGNORE_LABEL, label_palette, write_mask_png
from hardmine.data.records import DatasetIndex
from hardmine.report.draw import GT_COLOR, class_color

#: Colour of the pixels a pixel sampler kept.
KEPT_COLOR = (255, 40, 40)


def load_rgb(path: str | Path) -> Tensor:
    """uint8 RGB [3, H, W] of an image file."""
    with Image.open(path) as image:
        return pil_to_tensor(image.convert("RGB"))


def overlay_labels(image: Tensor, labels: Tensor, alpha: float = 0.55) -> Tensor:
    """uint8 [3, H, W] `image` with every label >= 1 of `labels` [H, W] painted in its class colour
    and ignored pixels (255) in white, blended by `alpha`; background stays as it is."""
    labels = labels.to(image.device)
    present = [int(v) for v in labels.unique().tolist() if v != 0]
    if not present:
        return image
    masks = torch.stack([labels == v for v in present])
    colors = [GT_COLOR if v == IGNORE_LABEL else class_color(v) for v in present]
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=colors)


def overlay_kept(image: Tensor, keep: Tensor, dim: float = 0.35) -> Tensor:
    """uint8 [3, H, W] `image` darkened to `dim` of its brightness where `keep` [H, W] is False and
    painted in `KEPT_COLOR` (half blended) where a sampler kept the pixel."""
    keep = keep.to(image.device)
    darkened = torch.where(keep, image, (image.float() * dim).round().to(torch.uint8))
    return draw_segmentation_masks(darkened, keep[None], alpha=0.5, colors=[KEPT_COLOR])


def loss_heat(loss: Tensor) -> Tensor:
    """uint8 [3, H, W] picture of per-pixel losses [H, W]: matplotlib's magma map, 0 black, the
    99th percentile and above bright."""
    from matplotlib import colormaps

    top = float(torch.quantile(loss.flatten().float(), 0.99)) if loss.numel() else 0.0
    scaled = (loss.float() / top).clamp(0.0, 1.0) if top > 0 else torch.zeros_like(loss, dtype=torch.float32)
    rgb = colormaps["magma"](scaled.numpy())[..., :3]
    return torch.from_numpy((rgb * 255).round().astype(np.uint8)).permute(2, 0, 1).contiguous()


def draw_selection(image: Tensor, target: Tensor, prediction: Tensor, loss: Tensor, keep: Tensor) -> Tensor:
    """Four captioned panels of one image at the model's input size (all [H, W] but `image`, uint8
    [3, H, W]): ground truth, prediction, per-pixel loss, the pixels the sampler kept."""
    panels = [
        overlay_labels(image, target),
        overlay_labels(image, prediction),
        loss_heat(loss),
        overlay_kept(image, keep),
    ]
    return captioned(panels, ["ground truth", "prediction", "loss", "kept pixels"])


def captioned(panels: Sequence[Tensor], captions: Sequence[str], height: int = 14) -> Tensor:
    """Panels (uint8 [3, H, W] each, the same H) side by side with a caption strip above each."""
    strips = []
    for panel, caption in zip(panels, captions):
        strip = Image.new("RGB", (panel.shape[-1], height), (0, 0, 0))
        ImageDraw.Draw(strip).text((2, 1), caption, fill=(255, 255, 255))
        strips.append(torch.cat([pil_to_tensor(strip), panel], dim=1))
    gap = torch.full((3, strips[0].shape[1], 4), 255, dtype=torch.uint8)
    parts: list[Tensor] = []
    for strip in strips:
        parts += [strip, gap]
    return torch.cat(parts[:-1], dim=2)


def save_png(image: Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil_image(image).save(path, format="PNG")
    return path


def draw_mask_predictions(
    index: DatasetIndex,
    predictions: Iterable[tuple[int, Tensor, Tensor | None]],
    out_dir: str | Path,
    max_images: int | None = None,
) -> int:
    """For each (image id, predicted labels [H, W], ground-truth mask or None) of the first
    `max_images` images (all with None): OUT_DIR/STEM.png, the image and its predicted mask drawn
    over it (and the ground truth beside it when given), and OUT_DIR/masks/STEM.png, the labels as a
    palette PNG (values are the labels). Returns how many were drawn."""
    out_dir = Path(out_dir)
    records = {r.image_id: r for r in index.records}
    palette = label_palette([class_color(label) for label in range(1, index.num_classes + 1)])
    drawn = 0
    for image_id, labels, target in predictions:
        if max_images is not None and drawn >= max_images:
            break
        record = records[image_id]
        stem = Path(record.file_name).stem
        image = load_rgb(index.image_root / record.file_name)
        panels, captions = [image, overlay_labels(image, labels)], ["image", "prediction"]
        if target is not None:
            panels.append(overlay_labels(image, target))
            captions.append("ground truth")
        save_png(captioned(panels, captions), out_dir / f"{stem}.png")
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        write_mask_png(out_dir / "masks" / f"{stem}.png", np.asarray(labels.to(torch.uint8)), palette)
        drawn += 1
    return drawn
