"""Proposal files for Fast R-CNN: per image, candidate boxes with scores.

Written by `hardmine proposals` from a trained model's RPN; a `.pt` file holding only tensors and
plain values (read with `weights_only=True`):
`{"format": "hardmine-proposals", "image_ids": [...], "boxes": [Tensor[P, 4]], "scores": [Tensor[P]]}`
with boxes in original image pixels (x1, y1, x2, y2).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor

from hardmine.config import Config
from hardmine.data.records import DatasetIndex
from hardmine.errors import DataError, HardmineError

FORMAT = "hardmine-proposals"


def save_proposals(path: str | Path, proposals: dict[int, dict[str, Tensor]]) -> Path:
    """Write image id -> {"boxes", "scores"} to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(proposals)
    payload = {
        "format": FORMAT,
        "image_ids": ids,
        "boxes": [proposals[i]["boxes"].detach().float().cpu() for i in ids],
        "scores": [proposals[i]["scores"].detach().float().cpu() for i in ids],
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_proposals(path: str | Path, index: DatasetIndex | None = None) -> dict[int, Tensor]:
    """image id -> [P, 4] boxes; with `index`, every image must have an entry inside its bounds."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"proposals file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable proposals file: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{path}: not a hardmine proposals file (no '{FORMAT}' tag)")
    ids, boxes = payload["image_ids"], payload["boxes"]
    if len(ids) != len(boxes):
        raise DataError(f"{path}: {len(ids)} image ids but {len(boxes)} box tensors")
    out: dict[int, Tensor] = {}
    for image_id, b in zip(ids, boxes):
        if b.ndim != 2 or b.shape[1] != 4:
            raise DataError(
                f"{path}: image id {image_id}: boxes must have shape [P, 4], got {tuple(b.shape)}"
            )
        out[int(image_id)] = b.float()
    if index is not None:
        missing = [r.image_id for r in index.records if r.image_id not in out]
        if missing:
            raise DataError(
                f"{path}: no proposals for {len(missing)} image(s) of {index.source}, e.g. ids {missing[:5]}"
            )
        for r in index.records:
            b = out[r.image_id]
            out[r.image_id] = b.clamp(min=0).minimum(torch.tensor([r.width, r.height, r.width, r.height]))
    return out


def load_split_proposals(cfg: Config, split: str, index: DatasetIndex) -> dict[int, Tensor] | None:
    """Fast R-CNN's proposals for `split` ("train" or "val") of `index` (None for other detectors)."""
    if cfg.model.arch != "fast_rcnn":
        return None
    path = cfg.data.train_proposals if split == "train" else (cfg.data.val_proposals or "")
    if not path:
        raise HardmineError(
            f"model.arch=fast_rcnn needs data.{split}_proposals (write one with hardmine proposals)"
        )
    return load_proposals(path, index)
