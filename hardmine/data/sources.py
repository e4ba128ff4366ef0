"""Turn the `data` config section into dataset indexes (generating the built-in dataset on demand).

`resolve_split` reads one split strictly (any problem is a DataError); `load_checked_splits` is
what training uses: both splits checked first (`hardmine.data.check`), then `data.on_invalid`
decides between stopping and skipping the invalid records.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardmine.config import DataConfig
from hardmine.data.check import DatasetCheck, check_dataset, check_pair, without_invalid
from hardmine.data.loading import load_dataset
from hardmine.data.problems import MAX_LISTED, Problem
from hardmine.data.records import DatasetIndex
from hardmine.data.synthetic import GENERATOR_VERSION, generate_synthetic
from hardmine.errors import DataError

#: Warnings printed when training starts; `hardmine data check` lists them all.
WARNINGS_SHOWN = 5

_MARKER = "hardmine-synth.json"


def ensure_builtin(data: DataConfig) -> Path:
    """Generate the built-in dataset into `data.synth_dir` unless it is already there, same settings."""
    root = Path(data.synth_dir)
    wanted = {
        "generator": GENERATOR_VERSION,
        "seed": data.synth_seed,
        "train": data.synth_train,
        "val": data.synth_val,
    }
    marker = root / _MARKER
    if marker.is_file() and (root / "train.json").is_file() and (root / "val.json").is_file():
        try:
            if json.loads(marker.read_text()) == wanted:
                return root
        except json.JSONDecodeError:
            pass
    generate_synthetic(root, seed=data.synth_seed, num_train=data.synth_train, num_val=data.synth_val)
    marker.write_text(json.dumps(wanted))
    return root


@dataclass(frozen=True)
class SplitSource:
    """Where one split comes from: the path and the reader options of `load_dataset`."""

    path: Path
    image_root: str | None = None
    split: str | None = None
    class_names: list[str] | None = None

    def options(self) -> dict[str, Any]:
        return {"image_root": self.image_root, "split": self.split, "class_names": self.class_names}


def split_source(data: DataConfig, split: str) -> SplitSource:
    """The source of `split` ("train" or "val") as configured (generating the built-in dataset)."""
    path = data.train if split == "train" else data.val
    if not path:
        if data.train or data.val:
            raise DataError(f"data.{split} is empty while data.train/data.val name a dataset; set both")
        return SplitSource(ensure_builtin(data) / f"{split}.json")
    voc_split = data.train_split if split == "train" else data.val_split
    return SplitSource(Path(path), data.image_root or None, voc_split, data.class_names or None)


def resolve_split(
    data: DataConfig, split: str, say: Callable[[str], None] | None = None, masks: bool = False
) -> DatasetIndex:
    """The dataset of `split` ("train" or "val") as configured. Any invalid record is a DataError,
    unless `data.on_invalid=skip`: then the split is checked as for training and the invalid images
    and annotations are left out (`say`ing what was dropped; default: to stderr), so that `eval`,
    `predict` etc. see the dataset a run was trained and evaluated on. `masks`: read (and check)
    the semantic masks too (segmentation)."""
    source = split_source(data, split)
    if data.on_invalid != "skip":
        return load_dataset(source.path, **source.options(), masks=masks)
    check = check_dataset(source.path, **source.options(), images=data.check_images, masks=masks)
    if check.fatal:
        raise DataError(_error_block(f"data.{split} {check.path}", str(check.path), check.fatal))
    return _usable(check, split, say or _print)


def _print(text: str) -> None:
    print(text, file=sys.stderr)


def load_checked_splits(
    data: DataConfig, say: Callable[[str], None] = _print, masks: bool = False
) -> tuple[DatasetIndex, DatasetIndex]:
    """The training and validation sets, checked first as `hardmine data check` would (image files
    as `data.check_images` says), then handled as `data.on_invalid` says: `stop` raises one
    DataError listing the errors; `skip` leaves out the invalid images and annotations and `say`s
    what it dropped. Errors about a dataset as a whole (malformed file, no images, categories that
    differ between the splits) stop training under either policy. Warnings are `say`d. `masks`:
    the semantic masks are read and checked too (segmentation; a bad mask is an error of its image)."""
    checks = {}
    for split in ("train", "val"):
        source = split_source(data, split)
        checks[split] = check_dataset(source.path, **source.options(), images=data.check_images, masks=masks)
    pair = check_pair(checks["train"], checks["val"])
    blocks = []
    for split, check in checks.items():
        stopping = check.errors if data.on_invalid == "stop" else check.fatal
        if stopping:
            blocks.append(_error_block(f"data.{split} {check.path}", str(check.path), stopping))
    if _errors(pair):
        blocks.append(_error_block("data.train vs data.val", "", _errors(pair)))
    if blocks:
        hint = f"data.on_invalid={data.on_invalid}; `hardmine data check PATH` reports every problem"
        if data.on_invalid == "stop":
            hint += "; data.on_invalid=skip trains without the invalid images and annotations"
        raise DataError("\n".join([*blocks, f"({hint})"]))
    for split, check in checks.items():
        if check.warnings:
            _say_warnings(f"data.{split} {check.path}", str(check.path), check.warnings, say)
    if pair:
        _say_warnings("data.train vs data.val", "", pair, say)
    return _usable(checks["train"], "train", say), _usable(checks["val"], "val", say)


def _usable(check: DatasetCheck, split: str, say: Callable[[str], None]) -> DatasetIndex:
    """The checked split without its invalid records (there are none under `stop`)."""
    if not check.errors:
        assert check.index is not None
        return check.index
    index, counts = without_invalid(check)
    if not index.records:
        raise DataError(f"{check.path}: data.on_invalid=skip left no valid image in data.{split}")
    say(f"data.{split} {check.path}: data.on_invalid=skip {counts.describe()}")
    return index


def _errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]


def _error_block(label: str, context: str, errors: list[Problem]) -> str:
    """`label: N error(s)`, then the first `MAX_LISTED` (files other than `context` named)."""
    lines = [f"{label}: {len(errors)} error(s)"]
    lines += [f"  - {p.describe(context)}" for p in errors[:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        lines.append(f"  ... and {len(errors) - MAX_LISTED} more")
    return "\n".join(lines)


def _say_warnings(label: str, context: str, warnings: list[Problem], say: Callable[[str], None]) -> None:
    say(f"{label}: {len(warnings)} warning(s)")
    for p in warnings[:WARNINGS_SHOWN]:
        say(f"  - {p.describe(context)}")
    if len(warnings) > WARNINGS_SHOWN:
        say(f"  ... and {len(warnings) - WARNINGS_SHOWN} more (hardmine data check lists them)")
