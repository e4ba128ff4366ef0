"""The comparison's gallery of hard examples: per method, one fixed training image with the
candidates that method trains on, drawn by `hardmine.report.gallery` from its trained model.

A method whose main head samples (random, OHEM, IoU-balanced, SSD hard negatives, ...) shows what
its own sampler selects on the image. A method whose sampler keeps every candidate (`none`, e.g.
RetinaNet with focal loss or alpha-balanced CE) selects nothing to show; it shows instead the
`top_k` candidates with the highest classification loss under its own loss, which are the ones
that loss weights most. Every method is drawn on the same image, so the pictures compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from hardmine.config import Config
from hardmine.data.records import DatasetIndex, ImageRecord
from hardmine.data.sources import resolve_split
from hardmine.engine.inference import load_trained
from hardmine.report.gallery import Selection, find_record, render_selection

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
    index = resolve_split(cfg.data, "train")
    record = pick_image(index, image_key)
    head = MAIN_HEAD[cfg.model.arch]
    sampler = getattr(cfg, head).sampler.name
    image, selection = render_selection(
        model, cfg, index, record, head=head, sampler=sampler, highest_loss=top_k if sampler == "none" else 0
    )
    _small_png(image, out_png)
    return Example(name, out_png, _caption(name, cfg, head, selection, top_k)), record.image_id
