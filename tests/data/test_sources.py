"""The `data` config section -> datasets: built-in cache, VOC options, category checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardmine.config import load_config
from hardmine.data.sources import ensure_builtin, load_checked_splits, resolve_split
from hardmine.errors import DataError
from tests.data.test_voc import default_files, make_voc


def test_voc_split_and_class_names_come_from_the_config(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC", default_files(), ["000009", "000005"], split_name="val")
    cfg = load_config(
        None,
        [
            f"data.train={root}",
            f"data.val={root}",
            "data.val_split=val",
            "data.class_names=[cat, dog, person]",
        ],
    )
    index = resolve_split(cfg.data, "val")
    assert index.class_names() == ["cat", "dog", "person"] and len(index.records) == 2


def test_builtin_dataset_is_generated_once_and_regenerated_when_settings_change(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.synth_dir={tmp_path / 's'}", "data.synth_train=2", "data.synth_val=1"])
    root = ensure_builtin(cfg.data)
    stamp = (root / "train.json").stat().st_mtime_ns
    ensure_builtin(cfg.data)
    assert (root / "train.json").stat().st_mtime_ns == stamp
    cfg.data.synth_train = 3
    ensure_builtin(cfg.data)
    assert len(json.loads((root / "train.json").read_text())["images"]) == 3


def test_only_one_of_train_and_val_set_is_an_error(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.train=x.json"])
    with pytest.raises(DataError, match="data.val is empty"):
        resolve_split(cfg.data, "val")


def test_categories_must_match_between_train_and_val(synth_dir: Path, tmp_path: Path) -> None:
    other = json.loads((synth_dir / "val.json").read_text())
    other["categories"][0]["name"] = "renamed"
    (tmp_path / "val.json").write_text(json.dumps(other))
    cfg = load_config(
        None,
        [
            f"data.train={synth_dir / 'train.json'}",
            f"data.val={tmp_path / 'val.json'}",
            f"data.image_root={synth_dir}",
        ],
    )
    with pytest.raises(DataError, match=r"categories differ .* only in train \[\(1, 'red_circle'\)\]"):
        load_checked_splits(cfg.data)
