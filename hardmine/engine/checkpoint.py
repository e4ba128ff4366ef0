"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and plain values: model / optimizer / scheduler state, the
iteration, RNG states, the run's config and its categories (so `eval` and `predict` can rebuild
the model and write the dataset's own category ids). Writing goes to a temporary file in the same
folder, is fsynced, then renamed over the target, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardmine.errors import CheckpointError

FORMAT = "hardmine-checkpoint"
VERSION = 1
LAST = "checkpoint_last.pt"
FINAL = "model_final.pt"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write `payload` (plus format tags) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a hardmine checkpoint; refuses files that carry arbitrary pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable checkpoint (not a torch.save archive)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain values "
            f"(only weights_only checkpoints are loaded)" + (f": {lines[0]}" if lines else "")
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a hardmine checkpoint (no '{FORMAT}' tag)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')} is not supported ({VERSION})"
        )
    return payload


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load a state dict, naming every missing, unexpected or mis-shaped key on mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"{source}: the checkpoint does not fit this model; " + "; ".join(parts))
    model.load_state_dict(state)
