"""Trained detectors: loaded from a checkpoint, checked against a dataset, run over it (predictions
keyed by the dataset's image id, or RPN proposals)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hardmine.config import SEGMENTATION_ARCHS, Config, apply_overrides, config_from_dict
from hardmine.data.dataset import DetectionDataset, collate_detection
from hardmine.data.loading import index_of_images
from hardmine.data.records import Category, DatasetIndex
from hardmine.data.sources import resolve_split
from hardmine.engine.checkpoint import load_checkpoint, load_model_state, require_keys
from hardmine.engine.proposals import load_split_proposals
from hardmine.engine.tta import TestTimeAugmentation, predict_tta
from hardmine.errors import HardmineError
from hardmine.models.build import build_model

Predictions = dict[int, dict[str, Tensor]]


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_trained(
    checkpoint: str | Path, overrides: list[str] | None = None
) -> tuple[Config, nn.Module, dict[str, Any], torch.device]:
    """A trained model in eval mode on its device, from a checkpoint: (the checkpoint's config with
    `overrides` applied, the model, the checkpoint payload, the device)."""
    payload = load_checkpoint(checkpoint)
    require_keys(payload, ("model", "config", "categories"), checkpoint)
    cfg = config_from_dict(payload["config"])
    apply_overrides(cfg, overrides or [])
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, len(payload["categories"]))
    load_model_state(model, payload["model"], str(checkpoint))
    model.to(device).eval()
    return cfg, model, payload, device


def require_detector(cfg: Config, checkpoint: str | Path, command: str) -> None:
    """HardmineError unless the checkpoint's model is a detector (`command` works on boxes)."""
    if cfg.model.arch in SEGMENTATION_ARCHS:
        raise HardmineError(
            f"{checkpoint} holds a segmentation model (model.arch={cfg.model.arch}); hardmine {command} "
            "works on detectors (segmentation: hardmine eval, hardmine predict, hardmine compare's gallery)"
        )


def trained_categories(payload: dict[str, Any]) -> list[Category]:
    """The categories a checkpoint's model was trained on, in label order."""
    return [Category(id=c["id"], name=c["name"], label=c["label"]) for c in payload["categories"]]


def checked_split(
    cfg: Config, payload: dict[str, Any], split: str, checkpoint: str | Path, masks: bool = False
) -> DatasetIndex:
    """`split` ("train" or "val") of `cfg.data` (with its semantic masks if `masks`), which must have
    the categories (ids and names, in order) that `checkpoint`, whose `payload` this is, was trained on."""
    index = resolve_split(cfg.data, split, masks=masks)
    trained = [(c.id, c.name) for c in trained_categories(payload)]
    data = [(c.id, c.name) for c in index.categories]
    if trained != data:
        raise HardmineError(f"{checkpoint} was trained on categories {trained} but {index.source} has {data}")
    return index


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    index: DatasetIndex,
    device: torch.device,
    batch_size: int = 4,
    num_workers: int = 0,
    proposals: dict[int, Tensor] | None = None,
    progress: Iterable | None = None,
    tta: TestTimeAugmentation | None = None,
) -> Predictions:
    """Predictions ("boxes", "scores", "labels" on the CPU, original coordinates) per image id.

    `proposals` (image id -> [P, 4] boxes) feeds a Fast R-CNN model. With `tta` enabled, every
    batch runs at each of its scales / flips and the detections are merged (`hardmine.engine.tta`).
    """
    dataset = DetectionDataset(index, train=False)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_detection
    )
    was_training = model.training
    model.eval()
    out: Predictions = {}
    try:
        for images, targets in loader:
            images = [img.to(device) for img in images]
            ids = [int(t["image_id"]) for t in targets]
            if proposals is not None:
                missing = [i for i in ids if i not in proposals]
                if missing:
                    raise ValueError(f"the proposals file has no entry for image ids {missing[:10]}")
                image_proposals = [proposals[i].to(device) for i in ids]
            else:
                image_proposals = None
            if tta is not None and tta.enabled:
                results = predict_tta(model, images, tta, image_proposals)
            elif image_proposals is not None:
                results = model(images, proposals=image_proposals)
            else:
                results = model(images)
            for image_id, result in zip(ids, results):
                out[image_id] = {
                    k: v.detach().float().cpu() if k != "labels" else v.cpu() for k, v in result.items()
                }
            if progress is not None:
                progress.update(len(ids))  # type: ignore[attr-defined]
    finally:
        model.train(was_training)
    return out


def predict_checkpoint(
    checkpoint: str | Path, overrides: list[str], images: list[Path]
) -> tuple[DatasetIndex, Predictions]:
    """What a checkpoint's model (its config with `overrides`) detects on `images`, or on its
    data.val when `images` is empty, with the multi-scale / flip testing of `eval`: the dataset
    predicted on and the predictions."""
    cfg, model, payload, device = load_trained(checkpoint, overrides)
    if images:
        index = index_of_images(images, trained_categories(payload))
        proposals = None
    else:
        index = checked_split(cfg, payload, "val", checkpoint)
        proposals = load_split_proposals(cfg, "val", index)
    if cfg.model.arch == "fast_rcnn" and proposals is None:
        raise HardmineError(
            "a Fast R-CNN model predicts on a dataset with a proposals file, not on loose images"
        )
    predictions = predict_dataset(
        model,
        index,
        device,
        batch_size=cfg.eval.batch_size,
        proposals=proposals,
        tta=TestTimeAugmentation.from_config(cfg.eval),
    )
    return index, predictions


def propose_checkpoint(
    checkpoint: str | Path, overrides: list[str], split: str, top_n: int
) -> tuple[DatasetIndex, dict[int, dict[str, Tensor]]]:
    """The RPN proposals of a Faster R-CNN checkpoint on `split` of its data: the dataset and, per
    image id, the `top_n` best "boxes" and "scores" (for a Fast R-CNN proposals file)."""
    cfg, model, payload, device = load_trained(checkpoint, overrides)
    require_detector(cfg, checkpoint, "proposals")
    if getattr(model, "rpn", None) is None:
        raise HardmineError(
            f"{checkpoint} has no RPN (model.arch={cfg.model.arch}); use a Faster R-CNN model"
        )
    index = checked_split(cfg, payload, split, checkpoint)
    loader = DataLoader(
        DetectionDataset(index, train=False), batch_size=cfg.eval.batch_size, collate_fn=collate_detection
    )
    proposals = {}
    for images, targets in loader:
        results = model.propose([img.to(device) for img in images])
        for t, r in zip(targets, results):
            proposals[int(t["image_id"])] = {"boxes": r["boxes"][:top_n], "scores": r["scores"][:top_n]}
    return index, proposals
