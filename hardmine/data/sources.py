"""Turn the `data` config section into dataset indexes (generating the built-in dataset on demand)."""

from __future__ import annotations

import json
from pathlib import Path

from hardmine.config import DataConfig
from hardmine.data.loading import load_dataset
from hardmine.data.records import DatasetIndex
from hardmine.data.synthetic import GENERATOR_VERSION, generate_synthetic
from hardmine.errors import DataError

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


def resolve_split(data: DataConfig, split: str) -> DatasetIndex:
    """The dataset of `split` ("train" or "val") as configured."""
    path = data.train if split == "train" else data.val
    if not path:
        if (data.train or data.val) and not path:
            raise DataError(f"data.{split} is empty while data.train/data.val name a dataset; set both")
        return load_dataset(ensure_builtin(data) / f"{split}.json")
    voc_split = data.train_split if split == "train" else data.val_split
    return load_dataset(
        path, image_root=data.image_root or None, split=voc_split, class_names=data.class_names or None
    )


def check_same_categories(train: DatasetIndex, val: DatasetIndex) -> None:
    """Training and validation must share the category ids and names, else labels would not match."""
    a = [(c.id, c.name) for c in train.categories]
    b = [(c.id, c.name) for c in val.categories]
    if a != b:
        only_train = sorted(set(a) - set(b))
        only_val = sorted(set(b) - set(a))
        raise DataError(
            f"categories differ between {train.source} and {val.source}: "
            f"only in train {only_train}, only in val {only_val}"
        )
