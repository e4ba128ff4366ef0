"""Run a detector over a dataset and collect predictions keyed by the dataset's image id."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hardmine.config import Config, apply_overrides, config_from_dict
from hardmine.data.dataset import DetectionDataset, collate_detection
from hardmine.data.records import DatasetIndex
from hardmine.engine.checkpoint import load_checkpoint, load_model_state, require_keys
from hardmine.engine.tta import TestTimeAugmentation, predict_tta
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
