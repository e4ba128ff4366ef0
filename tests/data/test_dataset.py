"""DetectionDataset: item format, flips, seeded determinism and image loading errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hardmine.data.dataset import DetectionDataset, collate_detection, item_seed
from hardmine.data.records import Category, DatasetIndex, ImageRecord
from hardmine.errors import DataError

W, H = 40, 30


def pattern(width: int = W, height: int = H) -> np.ndarray:
    """An RGB image whose pixels all differ, so a flip is visible everywhere."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 6, yy * 8, (xx + yy) % 256], axis=2).astype(np.uint8)


def record(image_id: int, file_name: str, boxes: list | tuple = (), ignore: list | tuple = ()) -> ImageRecord:
    boxes_arr = np.array(boxes, np.float32).reshape(-1, 4)
    ignore_arr = np.array(ignore, np.float32).reshape(-1, 4)
    return ImageRecord(
        image_id,
        file_name,
        W,
        H,
        boxes=boxes_arr,
        labels=np.arange(1, len(boxes_arr) + 1, dtype=np.int64),
        ignore_boxes=ignore_arr,
        ignore_labels=np.ones(len(ignore_arr), np.int64),
    )


@pytest.fixture
def index(tmp_path: Path) -> DatasetIndex:
    Image.fromarray(pattern()).save(tmp_path / "rgb.png")
    Image.fromarray(pattern()[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([pattern(), np.full((H, W), 128, np.uint8)])).save(tmp_path / "rgba.png")
    records = [
        record(7, "rgb.png", boxes=[[2, 3, 10, 20], [30, 0, 40, 30]], ignore=[[20, 5, 25, 15]]),
        record(8, "gray.png"),
        record(9, "rgba.png", boxes=[[0, 0, 1, 1]]),
    ]
    records += [record(10 + k, "rgb.png", boxes=[[k, 0, k + 5, 5]]) for k in range(20)]
    return DatasetIndex(records, [Category(1, "a", 1), Category(2, "b", 2)], tmp_path, tmp_path / "x.json")


def test_item_shapes_and_dtypes(index: DatasetIndex) -> None:
    image, target = DetectionDataset(index, train=False)[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert type(image) is torch.Tensor and 0.0 <= image.min() and image.max() <= 1.0
    assert set(target) == {"boxes", "labels", "ignore_boxes", "image_id"}
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (2, 4)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 2]
    assert target["ignore_boxes"].dtype == torch.float32 and target["ignore_boxes"].shape == (1, 4)
    assert target["image_id"].dtype == torch.int64 and target["image_id"].shape == ()
    assert target["image_id"].item() == 7
    assert all(type(v) is torch.Tensor for v in target.values())


def test_eval_item_is_the_file_unchanged(index: DatasetIndex) -> None:
    image, target = DetectionDataset(index, train=False)[0]
    expected = torch.from_numpy(pattern()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected)
    torch.testing.assert_close(target["boxes"], torch.tensor(index.records[0].boxes))


def test_grayscale_and_rgba_become_rgb(index: DatasetIndex) -> None:
    dataset = DetectionDataset(index, train=False)
    gray, target = dataset[1]
    assert gray.shape == (3, H, W) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert target["boxes"].shape == (0, 4) and target["ignore_boxes"].shape == (0, 4)
    rgba, _ = dataset[2]
    torch.testing.assert_close(rgba, dataset[0][0])


def test_flip_moves_image_boxes_and_ignore_boxes(index: DatasetIndex) -> None:
    image, target = DetectionDataset(index, train=True, hflip_prob=1.0)[0]
    original, _ = DetectionDataset(index, train=False)[0]
    torch.testing.assert_close(image, original.flip(-1))
    # x -> W - x, corners swapped: [2, 3, 10, 20] -> [30, 3, 38, 20], [30, 0, 40, 30] -> [0, 0, 10, 30]
    assert target["boxes"].tolist() == [[30, 3, 38, 20], [0, 0, 10, 30]]
    assert target["ignore_boxes"].tolist() == [[15, 5, 20, 15]]
    assert target["labels"].tolist() == [1, 2]


def test_no_flip_with_zero_probability(index: DatasetIndex) -> None:
    image, target = DetectionDataset(index, train=True, hflip_prob=0.0)[0]
    assert target["boxes"].tolist() == [[2, 3, 10, 20], [30, 0, 40, 30]]


def flips(dataset: DetectionDataset) -> list[bool]:
    """Which items of the 20 one-box images come out flipped."""
    return [dataset[i][1]["boxes"][0, 0].item() != i - 3 for i in range(3, len(dataset))]


def test_augmentation_is_seeded_by_seed_epoch_and_index(index: DatasetIndex) -> None:
    a = DetectionDataset(index, train=True, seed=0)
    b = DetectionDataset(index, train=True, seed=0)
    assert flips(a) == flips(b)
    assert 0 < sum(flips(a)) < 20
    a.set_epoch(1)
    assert flips(a) != flips(b)
    b.set_epoch(1)
    assert flips(a) == flips(b)
    assert flips(DetectionDataset(index, train=True, seed=1)) != flips(b)
    assert len({item_seed(0, 0, 1), item_seed(0, 1, 0), item_seed(1, 0, 0), item_seed(0, 0, 0)}) == 4


def test_items_do_not_touch_the_global_rng(index: DatasetIndex) -> None:
    dataset = DetectionDataset(index, train=True)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    dataset[0]
    dataset[5]
    assert torch.equal(torch.rand(5), expected)
    torch.manual_seed(999)  # the item does not depend on the global RNG either
    assert flips(dataset) == flips(DetectionDataset(index, train=True))


def test_same_items_with_and_without_workers(index: DatasetIndex) -> None:
    dataset = DetectionDataset(index, train=True, seed=3)
    dataset.set_epoch(2)

    def run(workers: int) -> list[list[list[float]]]:
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_detection)
        return [t["boxes"].tolist() for _, targets in loader for t in targets]

    assert run(0) == run(2)


def test_collate_keeps_lists(index: DatasetIndex) -> None:
    dataset = DetectionDataset(index, train=False)
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert [t["image_id"].item() for t in targets] == [7, 8]


def test_missing_image_file(index: DatasetIndex) -> None:
    index.records[0].file_name = "nope.png"
    with pytest.raises(DataError, match=r"nope\.png \(image id 7\): image file not found"):
        DetectionDataset(index, train=False)[0]


@pytest.mark.parametrize("content", [b"not an image at all", b"truncated"])
def test_corrupt_image_file(index: DatasetIndex, content: bytes) -> None:
    path = index.image_root / "bad.png"
    if content == b"truncated":
        full = (index.image_root / "rgb.png").read_bytes()
        path.write_bytes(full[: len(full) // 2])
    else:
        path.write_bytes(content)
    index.records[0].file_name = "bad.png"
    with pytest.raises(DataError, match=r"bad\.png \(image id 7\): cannot read image") as info:
        DetectionDataset(index, train=False)[0]
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_image_size_mismatch(index: DatasetIndex) -> None:
    index.records[0].width = 41
    expected = r"rgb\.png \(image id 7\): decoded image is 40x30 but the annotations say 41x30"
    with pytest.raises(DataError, match=expected):
        DetectionDataset(index, train=False)[0]


def test_proposals_are_flipped_with_the_image(index: DatasetIndex) -> None:
    boxes = [[0.0, 0.0, 4.0, 6.0], [10.5, 1.0, 40.0, 30.0]]
    proposals = {r.image_id: torch.tensor(boxes) for r in index.records}
    _, target = DetectionDataset(index, train=True, hflip_prob=1.0, proposals=proposals)[0]
    assert target["proposals"].dtype == torch.float32
    assert target["proposals"].tolist() == [[36, 0, 40, 6], [0, 1, 29.5, 30]]
    assert proposals[7].tolist() == [[0, 0, 4, 6], [10.5, 1, 40, 30]]  # the caller's tensor is untouched
    _, target = DetectionDataset(index, train=False, proposals=proposals)[0]
    assert target["proposals"].tolist() == [[0, 0, 4, 6], [10.5, 1, 40, 30]]


def test_missing_proposals_are_reported(index: DatasetIndex) -> None:
    expected = r"x\.json: no proposals for 22 image\(s\), e.g. image ids \[8, 9, 10, 11, 12\]"
    with pytest.raises(DataError, match=expected):
        DetectionDataset(index, train=True, proposals={7: torch.zeros((0, 4))})


def test_mined_hard_negatives_are_flipped_with_the_image(index: DatasetIndex) -> None:
    mined = {7: torch.tensor([[2.0, 3.0, 10.0, 20.0]])}
    _, target = DetectionDataset(index, train=True, hflip_prob=1.0, hard_negatives=mined)[0]
    assert target["hard_negatives"].tolist() == [[30, 3, 38, 20]]
    _, target = DetectionDataset(index, train=True, hflip_prob=1.0, hard_negatives=mined)[1]
    assert target["hard_negatives"].shape == (0, 4)  # an image without mined regions
