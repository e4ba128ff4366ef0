"""The synthetic dataset: determinism, counts, valid boxes, empty images, class balance, offline."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardmine.data import synthetic
from hardmine.data.coco import load_coco
from hardmine.data.records import DatasetIndex
from hardmine.data.synthetic import SYNTH_CLASSES, generate_synthetic

NUM_TRAIN, NUM_VAL = 30, 6


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetIndex, DatasetIndex]:
    root = tmp_path_factory.mktemp("synth")
    train, val = generate_synthetic(root, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL)
    return root, load_coco(train), load_coco(val)


def test_writes_the_expected_files(generated: tuple[Path, DatasetIndex, DatasetIndex]) -> None:
    root, train, val = generated
    assert (root / "train.json").is_file() and (root / "val.json").is_file()
    assert len(train.records) == NUM_TRAIN and len(val.records) == NUM_VAL
    assert train.records[12].file_name == "images/train_000012.png"
    assert val.records[3].file_name == "images/val_000003.png"
    assert len(list((root / "images").glob("*.png"))) == NUM_TRAIN + NUM_VAL
    assert train.image_root == root
    assert train.class_names() == list(SYNTH_CLASSES) and len(SYNTH_CLASSES) == 5


def test_same_seed_gives_identical_bytes(generated: tuple, tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", seed=0, num_train=5, num_val=2)
    generate_synthetic(tmp_path / "b", seed=0, num_train=5, num_val=2)
    small = files(tmp_path / "a")
    assert small == files(tmp_path / "b")
    # image i depends only on (seed, split, i): a bigger dataset starts with the same images
    big = files(generated[0])
    assert all(big[name] == data for name, data in small.items() if name.endswith(".png"))


def test_worker_processes_do_not_change_the_output(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "one", seed=5, num_train=4, num_val=2, workers=1)
    generate_synthetic(tmp_path / "two", seed=5, num_train=4, num_val=2, workers=2)
    assert files(tmp_path / "one") == files(tmp_path / "two")


def test_other_seed_differs(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", seed=0, num_train=2, num_val=1)
    generate_synthetic(tmp_path / "b", seed=1, num_train=2, num_val=1)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a)


def test_sizes_and_boxes_are_valid(generated: tuple[Path, DatasetIndex, DatasetIndex]) -> None:
    root, train, val = generated
    for record in train.records + val.records:
        assert 256 <= record.width <= 320 and 256 <= record.height <= 320
        with Image.open(root / record.file_name) as im:
            assert im.size == (record.width, record.height) and im.mode == "RGB"
        for boxes in (record.boxes, record.ignore_boxes):
            assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= record.width)
            assert np.all(boxes[:, 3] <= record.height)
            assert np.all(boxes[:, 2:] - boxes[:, :2] >= 2)  # at least a couple of pixels
            assert np.array_equal(boxes, np.round(boxes))  # pixel-aligned: tight around visible pixels


def test_objects_per_image_and_empty_images(generated: tuple[Path, DatasetIndex, DatasetIndex]) -> None:
    _, train, _ = generated
    counts = np.array([len(r.boxes) for r in train.records])
    assert (counts == 0).any(), "some images have distractors only"
    assert counts.max() <= synthetic.OBJECTS_PER_IMAGE[1]
    assert 4 <= counts.mean() <= 10
    assert sum(len(r.ignore_boxes) for r in train.records) > 0, "partly hidden objects become ignore regions"


def test_class_balance(generated: tuple[Path, DatasetIndex, DatasetIndex]) -> None:
    _, train, _ = generated
    labels = np.concatenate([r.labels for r in train.records])
    shares = np.bincount(labels, minlength=len(SYNTH_CLASSES) + 1)[1:] / len(labels)
    assert np.all(shares > 0.1) and np.all(shares < 0.3)


def test_object_sizes_span_a_wide_range(generated: tuple[Path, DatasetIndex, DatasetIndex]) -> None:
    _, train, _ = generated
    boxes = np.concatenate([r.boxes for r in train.records])
    side = (boxes[:, 2:] - boxes[:, :2]).max(axis=1)
    assert side.min() <= 12 and side.max() >= 60


def test_visibility_rule() -> None:
    mask = np.zeros((10, 10), np.float32)
    mask[2:8, 2:8] = 1.0  # 36 pixels
    item = synthetic._Item(mask, np.zeros((10, 10, 3), np.float32), x=-3, y=5, opacity=1.0, label=1)
    owner = np.full((20, 20), -1, np.int32)
    owner[7:13, 0:5] = 4  # the image clips columns -1 and -2 away; another item hides column 0
    owner[7:13, 0] = 9
    box, visible = synthetic._visible_box(item, owner, 4)
    assert box.tolist() == [1, 7, 5, 13] and visible == pytest.approx(24 / 36)


def test_backgrounds_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the synthetic generator tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    synthetic._backgrounds.cache_clear()
    photos = synthetic._backgrounds()
    assert len(photos) == len(synthetic.BACKGROUND_IMAGES)
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos)


def test_rejects_empty_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        generate_synthetic(tmp_path, num_val=0)
