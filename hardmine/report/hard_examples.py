"""The comparison's gallery of hard examples: per method, one fixed training image with the
candidates that method trains on, drawn by `hardmine.report.gallery` from its trained model.

A method whose main head samples (random, OHEM, IoU-balanced, SSD hard negatives, ...) shows what
its own sampler selects on the image. A method whose sampler keeps every candidate (`none`, e.g.
RetinaNet with focal loss or alpha-balanced CE) selects nothing to show; it shows instead the
`top_k` candidates with the highest classification loss under its own loss, which are the ones
that loss weights most. A segmentation method shows its ground truth, prediction, per-pixel loss
and the pixels its pixel sampler keeps (`render_pixel_example`). Every method is drawn on the same
image, so the pictures compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2.functional import to_pil_image

from hardmine.config import SEGMENTATION_ARCHS, Config
from hardmine.data.records import DatasetIndex, ImageRecord
from hardmine.data.sources import resolve_split
from hardmine.engine.inference import load_trained
from hardmine.report.gallery import Selection, find_record, render_selection
from hardmine.report.mask_draw import draw_selection
from hardmine.segmentation.dataset import SegmentationDataset
from hardmine.segmentation.model import SegmentationModel

#: model.arch -> the head whose candidates are shown (the one the compared samplers act on).
MAIN_HEAD = {"faster_rcnn": "roi_head", "fast_rcnn": "roi_head", "retinanet": "dense_head"}


@dataclass
class Example:
    """One method's picture: `path` (None when it could not be drawn) and what it shows."""

    name: str
    path: Path | None
    caption: str


def pick_image(index: DatasetIndex, key: str | None) -> ImageRecord:
    """The image named by `key` (id or file name), else the one with the most objects (lowest id
    among equals): a busy image shows the most foreground / background contrast."""
    if key is not None:
        return find_record(index, key)
    return max(index.records, key=lambda r: (len(r.boxes), -r.image_id))


def _loss_name(cfg: Config, head: str) -> str:
    loss = getattr(cfg, head).cls_loss
    alpha = getattr(loss, "alpha", -1.0)
    balanced = alpha >= 0
    alpha_text = f"alpha {alpha:g}" if balanced else "no alpha"
    if loss.name == "focal":
        return f"focal loss (gamma {loss.gamma:g}, {alpha_text})"
    if loss.name == "bce":
        return f"alpha-balanced BCE ({alpha_text})" if balanced else "plain BCE"
    return loss.name


def _caption(name: str, cfg: Config, head: str, selection: Selection, top_k: int) -> str:
    c = selection.counts
    where = f"Training image {selection.image_id}, trained model (seed {cfg.train.seed})"
    if selection.sampler == "none":
        top = selection.highest_loss(top_k)
        fg = int((selection.assigned[top] > 0).sum())
        return (
            f"{name}: `{head}` sampler `none` trains on all {c['num_eligible']} eligible candidates "
            f"(of {c['num_candidates']}), weighted by its {_loss_name(cfg, head)}; drawn are the "
            f"{len(top)} with the highest classification loss: {fg} foreground (green), "
            f"{len(top) - fg} background (magenta); ground truth white. {where}."
        )
    nms = selection.nms_note()
    return (
        f"{name}: `{head}` sampler `{selection.sampler}` selects {c['num_fg_selected']} foreground "
        f"(green) and {c['num_bg_selected']} background (magenta) of {c['num_eligible']} eligible "
        f"candidates ({c['num_candidates']} in all{'; ' + nms if nms else ''}); ground truth white. "
        f"{where}. One image is a batch of one: a per-batch budget is one image's share."
    )


def _small_png(image: Image.Image, path: Path) -> Path:
    """Save as a 256-colour PNG: the boxes stay crisp, the file a fraction of full colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256).save(path, format="PNG", optimize=True)
    return path


def render_example(
    name: str, checkpoint: Path, image_key: str | None, top_k: int, out_png: Path
) -> tuple[Example, int]:
    """Draw `name`'s example from its trained `checkpoint` on the image `image_key` (see
    `pick_image`) of its training set; returns the example and the image's id (to pin the image
    for the other methods)."""
    cfg, model, _, _ = load_trained(checkpoint)
    if cfg.model.arch in SEGMENTATION_ARCHS:  # the pixels its sampler keeps
        return render_pixel_example(name, cfg, model, image_key, out_png)
    index = resolve_split(cfg.data, "train")
    record = pick_image(index, image_key)
    head = MAIN_HEAD[cfg.model.arch]
    sampler = getattr(cfg, head).sampler.name
    image, selection = render_selection(
        model, cfg, index, record, head=head, sampler=sampler, highest_loss=top_k if sampler == "none" else 0
    )
    _small_png(image, out_png)
    return Example(name, out_png, _caption(name, cfg, head, selection, top_k)), record.image_id


def render_pixel_example(
    name: str, cfg: Config, model: SegmentationModel, image_key: str | None, out_png: Path
) -> tuple[Example, int]:
    """A segmentation method's example: on the training image `image_key` (see `pick_image`), at
    the model's input size, the ground truth, its trained model's prediction, each pixel's loss and
    the pixels its sampler keeps; returns the example and the image's id."""
    index = resolve_split(cfg.data, "train", masks=True)
    record = pick_image(index, image_key)
    image, target = SegmentationDataset(index, train=False)[index.records.index(record)]
    selection = model.select_pixels(image, target["mask"])
    h, w = selection.keep.shape
    small = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    picture = draw_selection(
        (small.clamp(0, 1) * 255).round().to(torch.uint8),
        selection.target,
        selection.prediction,
        selection.loss,
        selection.keep,
    )
    _small_png(to_pil_image(picture), out_png)
    return Example(
        name, out_png, _pixel_caption(name, cfg, record.image_id, selection.stats)
    ), record.image_id


def _pixel_caption(name: str, cfg: Config, image_id: int, stats: dict[str, float]) -> str:
    s = cfg.seg_head
    sampler = {
        "none": "sampler `none` keeps every pixel not ignored",
        "ohem": "sampler `ohem` keeps the pixels whose true-class probability is below "
        f"{getattr(s.sampler, 'thresh', 0):g} (at least min_kept)",
        "topk": f"sampler `topk` keeps the {getattr(s.sampler, 'fraction', 0):.0%} of pixels with the "
        "highest loss",
    }.get(s.sampler.name, f"sampler `{s.sampler.name}`")
    return (
        f"{name}: loss `{s.loss.name}`, {sampler}: {stats['num_kept']:.0f} of {stats['num_valid']:.0f} "
        f"valid pixels ({stats['kept_fraction']:.0%}), {stats['fg_loss_share']:.0%} of their loss on "
        "foreground pixels. Left to right: ground truth, prediction, per-pixel loss (brighter = "
        "higher), kept pixels (red; the others dimmed). "
        f"Training image {image_id} at the model's input size, trained model (seed {cfg.train.seed})."
    )
