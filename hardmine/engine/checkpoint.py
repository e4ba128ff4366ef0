"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and plain values: model / optimizer / scheduler state, the
iteration, RNG states, the run's config and its categories (so `eval` and `predict` can rebuild
the model and write the dataset's own category ids). Writing goes to a temporary file in the same
folder, is fsynced, then renamed over the target (and the folder fsynced), so a crash or a SIGKILL at
any moment leaves either the old file or the new one, never a half-written one. `atomic_write` does
the same for any file (the trainer's config.yaml).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from hardmine.errors import CheckpointError
from hardmine.weights import state_dict_mismatch

FORMAT = "hardmine-checkpoint"
VERSION = 1
LAST = "checkpoint_last.pt"
FINAL = "model_final.pt"


#: Temporary files of `atomic_write` are named `.NAME.RANDOM.tmp` next to their target.
_TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a temporary file next to `path` for writing (binary); on success it is flushed,
    fsynced and renamed over `path`, and the folder is fsynced so the rename itself survives a
    power cut. On an exception (KeyboardInterrupt included) the temporary file is removed and
    `path` is left as it was; after a SIGKILL it stays behind (`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
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


def remove_stale_temporaries(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files that an `atomic_write` of one of `names` in `folder` left behind
    when its process was killed; only call this while no such write is running. Returns them."""
    stale = [
        p
        for name in names
        for p in Path(folder).glob(f".{name}.*{_TEMP_SUFFIX}")
        if p.is_file() and p.name.startswith(f".{name}.")
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write `payload` (plus format tags) to `path` (see `atomic_write`)."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    try:
        with atomic_write(path) as fh:
            torch.save(payload, fh)
    except OSError as exc:  # e.g. a full disk
        message = f"{path}: cannot write the checkpoint ({exc}); any earlier one is intact"
        raise CheckpointError(message) from None
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
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: it holds a pickled Python object{what}, not only tensors and plain "
            "values; checkpoints are read with torch.load(weights_only=True), which never runs code "
            "from the file. A hardmine checkpoint never holds one: this file was written by something else"
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


def require_keys(payload: dict[str, Any], keys: tuple[str, ...], source: str | Path) -> None:
    """CheckpointError naming the entries of `keys` that `payload` lacks."""
    missing = [k for k in keys if k not in payload]
    if missing:
        raise CheckpointError(
            f"{source}: the checkpoint lacks {', '.join(missing)} (it holds {', '.join(sorted(payload))})"
        )


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load a state dict, naming every missing, unexpected or mis-shaped key on mismatch."""
    differences = state_dict_mismatch(model.state_dict(), state)
    if differences:
        raise CheckpointError(f"{source}: the checkpoint does not fit this model; " + "; ".join(differences))
    model.load_state_dict(state)
