"""Detection mixup: exact blends and targets, seeded draws, the dataset's mixed items, the switch-off
for the last epochs (also through the trainer), and the config's validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from hardmine.config import load_config
from hardmine.data.dataset import DetectionDataset, collate_detection, item_seed
from hardmine.data.mixup import (
    MixupOptions,
    blend_images,
    draw_mixup,
    first_mixup_free_epoch,
    mix_targets,
    mixup_pair,
)
from hardmine.data.records import Category, DatasetIndex, ImageRecord
from hardmine.data.transforms import AUGMENT_STEPS, AugmentOptions, build_train_transforms
from hardmine.engine import tasks, trainer, training
from hardmine.errors import ConfigError
from hardmine.models.transform import DetectionTransform


def bb(rows: list[list[float]], canvas: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    return tv_tensors.BoundingBoxes(
        torch.tensor(rows, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=canvas
    )


def channel(rows: list[list[int]]) -> tv_tensors.Image:
    """A 3-channel uint8 image with the same values in every channel."""
    return tv_tensors.Image(torch.tensor(rows, dtype=torch.uint8).expand(3, -1, -1).clone())


def test_blend_gives_the_exact_pixels_canvas_boxes_and_weights():
    image_a = channel([[40, 80, 120], [160, 200, 240]])  # 2 x 3
    image_b = channel([[20, 60], [100, 140], [180, 220]])  # 3 x 2
    target_a = {
        "boxes": bb([[0, 0, 2, 1]], (2, 3)),
        "labels": torch.tensor([1]),
        "ignore_boxes": bb([[1, 1, 3, 2]], (2, 3)),
        "proposals": bb([[0, 0, 3, 2]], (2, 3)),
        "image_id": torch.tensor(5),
    }
    target_b = {
        "boxes": bb([[0, 1, 2, 3], [1, 0, 2, 2]], (3, 2)),
        "labels": torch.tensor([2, 3]),
        "ignore_boxes": bb([], (3, 2)),
        "proposals": bb([[0, 0, 1, 1]], (3, 2)),
        "image_id": torch.tensor(9),
    }
    image, target = mixup_pair(image_a, target_a, image_b, target_b, 0.75)
    # 0.75 * a + 0.25 * b on the 3 x 3 canvas, each image at the top-left, zeros elsewhere
    expected = [[35, 75, 90], [145, 185, 180], [45, 55, 0]]
    assert image.dtype == torch.uint8 and torch.equal(image, channel(expected))
    assert target["boxes"].tolist() == [[0, 0, 2, 1], [0, 1, 2, 3], [1, 0, 2, 2]]
    assert all(target[k].canvas_size == (3, 3) for k in ("boxes", "ignore_boxes", "proposals"))
    assert target["labels"].tolist() == [1, 2, 3]
    assert target["weights"].dtype == torch.float32 and target["weights"].tolist() == [0.75, 0.25, 0.25]
    assert target["ignore_boxes"].tolist() == [[1, 1, 3, 2]]
    assert target["proposals"].tolist() == [[0, 0, 3, 2], [0, 0, 1, 1]]
    assert target["image_id"].item() == 5


def test_blend_is_the_weighted_sum_rounded_to_the_nearest_grey_level():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 7, 5), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (3, 4, 9), dtype=torch.uint8, generator=g)
    lam = 0.3183
    exact = torch.zeros(3, 7, 9, dtype=torch.float64)
    exact[:, :7, :5] += lam * a.double()
    exact[:, :4, :9] += (1 - lam) * b.double()
    blended = blend_images(a, b, lam)
    assert blended.shape == (3, 7, 9) and (blended.double() - exact).abs().max() <= 0.5 + 1e-4
    with pytest.raises(ValueError, match="mixup blends uint8 images"):
        blend_images(a.float(), b, lam)


def test_targets_multiply_existing_weights_and_refuse_what_they_cannot_combine():
    a = {"boxes": bb([[0, 0, 1, 1]], (4, 4)), "labels": torch.tensor([1]), "weights": torch.tensor([0.5])}
    a["image_id"] = torch.tensor(1)
    b = {"boxes": bb([[1, 1, 2, 2]], (4, 4)), "labels": torch.tensor([2]), "image_id": torch.tensor(2)}
    assert mix_targets(a, b, 0.25, (4, 4))["weights"].tolist() == [0.125, 0.75]
    with pytest.raises(ValueError, match=r"target entry 'proposals' is in only one of the two images"):
        mix_targets({**a, "proposals": bb([], (4, 4))}, b, 0.5, (4, 4))
    with pytest.raises(ValueError, match=r"does not know how to combine the target entries \['masks'\]"):
        mix_targets({**a, "masks": torch.zeros(1)}, b, 0.5, (4, 4))


def seeded_draw(options: MixupOptions, index: int, num_items: int, epoch: int, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(item_seed(seed, epoch, index))
        return draw_mixup(options, index, num_items, epoch)


def test_draws_pick_another_item_and_a_ratio_in_0_1():
    options = MixupOptions(prob=1.0, alpha=1.5)
    draws = [seeded_draw(options, 2, 5, epoch) for epoch in range(200)]
    assert {d.partner for d in draws} == {0, 1, 3, 4}
    lams = torch.tensor([d.lam for d in draws])
    assert bool(((lams > 0) & (lams < 1)).all()) and abs(float(lams.mean()) - 0.5) < 0.06
    assert draws[7] == seeded_draw(options, 2, 5, 7)  # the same seed, epoch and index: the same draw
    half = [seeded_draw(MixupOptions(prob=0.5), 2, 5, epoch) for epoch in range(200)]
    assert 60 < sum(d is not None for d in half) < 140
    assert seeded_draw(options, 0, 1, 0) is None  # nothing to mix a single image with


def test_no_draws_at_all_in_an_epoch_without_mixup():
    torch.manual_seed(3)
    expected = torch.rand(3)
    for options, epoch in ((MixupOptions(prob=0.0), 0), (MixupOptions(prob=1.0, off_from_epoch=4), 4)):
        torch.manual_seed(3)
        assert draw_mixup(options, 0, 10, epoch) is None
        assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("max_iter", "per_epoch", "last", "expected"),
    [
        (12, 3, 1, 3),
        (12, 3, 2, 2),
        (10, 3, 1, 3),
        (10, 3, 2, 2),
        (10, 3, 0, None),
        (10, 3, 4, 0),
        (10, 3, 9, 0),
    ],
)
def test_first_mixup_free_epoch(max_iter, per_epoch, last, expected):
    # 10 iterations of 3: epochs 0..3, the last one partial (iteration 9) and counted
    assert first_mixup_free_epoch(max_iter, per_epoch, last) == expected


W, H = 12, 8


@pytest.fixture
def index(tmp_path: Path) -> DatasetIndex:
    """Six images of two sizes, each with one or two objects and some with ignore regions."""
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(g.integers(0, 256, (10, 6, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    records = []
    for k in range(6):
        name, width, height = ("a.png", W, H) if k % 2 == 0 else ("b.png", 6, 10)
        boxes = np.array([[k % 3, 1, 4, 5], [1, 2, 5, 7]][: 1 + k % 2], np.float32)
        ignore = np.array([[0, 0, 2, 2]] if k % 3 == 0 else [], np.float32).reshape(-1, 4)
        records.append(
            ImageRecord(
                k + 100,
                name,
                width,
                height,
                boxes=boxes,
                labels=np.arange(1, len(boxes) + 1),
                ignore_boxes=ignore,
                ignore_labels=np.ones(len(ignore), np.int64),
            )
        )
    return DatasetIndex(records, [Category(1, "x", 1), Category(2, "y", 2)], tmp_path, tmp_path / "d.json")


def items(dataset: DetectionDataset) -> list[tuple[Tensor, dict[str, Tensor]]]:
    return [dataset[i] for i in range(len(dataset))]


def assert_same_items(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (image_a, target_a), (image_b, target_b) in zip(first, second):
        assert torch.equal(image_a, image_b)
        assert set(target_a) == set(target_b) and all(torch.equal(target_a[k], target_b[k]) for k in target_a)


def test_a_mixed_item_is_the_blend_with_its_drawn_partner(index):
    options = MixupOptions(prob=1.0)
    dataset = DetectionDataset(index, train=True, hflip_prob=0.0, seed=4, mixup=options)
    dataset.set_epoch(2)
    for i in range(len(dataset)):
        draw = seeded_draw(options, i, len(dataset), epoch=2, seed=4)
        assert draw.partner != i
        image, target = dataset[i]
        (own_image, own), (other_image, other) = dataset.load(i), dataset.load(draw.partner)
        expected = v2.functional.to_dtype(blend_images(own_image, other_image, draw.lam), scale=True)
        assert torch.equal(image, expected)
        assert torch.equal(target["boxes"], torch.cat([own["boxes"], other["boxes"]]))
        assert torch.equal(target["ignore_boxes"], torch.cat([own["ignore_boxes"], other["ignore_boxes"]]))
        assert torch.equal(target["labels"], torch.cat([own["labels"], other["labels"]]))
        lams = [draw.lam] * len(own["boxes"]) + [1 - draw.lam] * len(other["boxes"])
        assert torch.equal(target["weights"], torch.tensor(lams, dtype=torch.float32))
        assert target["image_id"].item() == 100 + i
        assert all(type(v) is Tensor for v in target.values())


def test_mixed_items_are_the_same_every_time_and_with_workers(index):
    def dataset(seed: int = 1) -> DetectionDataset:
        augment = AugmentOptions(steps=AUGMENT_STEPS)
        return DetectionDataset(index, train=True, seed=seed, augment=augment, mixup=MixupOptions(prob=0.5))

    first = dataset()
    first.set_epoch(2)
    reference = items(first)
    assert 0 < sum("weights" in t for _, t in reference) < len(reference)  # some mixed, some not
    assert_same_items(items(first), reference)
    again = dataset()
    again.set_epoch(2)
    assert_same_items(items(again), reference)
    loader = DataLoader(again, batch_size=2, num_workers=2, collate_fn=collate_detection)
    assert_same_items([pair for images, targets in loader for pair in zip(images, targets)], reference)
    again.set_epoch(3)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(items(again), reference))


def todays_items(index: DatasetIndex, seed: int, epoch: int) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """The items as the dataset made them before mixup and `data.augment`: flip p=0.5, then float."""
    dataset = DetectionDataset(index, train=False)
    out = []
    for i in range(len(index.records)):
        image, target = dataset.load(i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(seed, epoch, i))
            reference = v2.Compose([v2.RandomHorizontalFlip(p=0.5), v2.ToDtype(torch.float32, scale=True)])
            image, target = reference(image, target)
        out.append((image.as_subclass(Tensor), {k: v.as_subclass(Tensor) for k, v in target.items()}))
    return out


def test_mixup_prob_zero_gives_exactly_todays_items(index):
    for epoch in (0, 1):
        dataset = DetectionDataset(index, train=True, seed=3, mixup=MixupOptions(prob=0.0))
        dataset.set_epoch(epoch)
        reference = todays_items(index, seed=3, epoch=epoch)
        assert_same_items(items(dataset), reference)
        assert any(
            not torch.equal(a[1]["boxes"], b[1]["boxes"])
            for a, b in zip(reference, todays_items(index, 3, 5))
        )


def test_mixup_stops_at_the_first_mixup_free_epoch(index):
    dataset = DetectionDataset(index, train=True, seed=2, mixup=MixupOptions(prob=1.0, off_from_epoch=2))
    for epoch in range(4):
        dataset.set_epoch(epoch)
        if epoch < 2:
            assert all("weights" in t for _, t in items(dataset))
        else:
            assert_same_items(items(dataset), todays_items(index, seed=2, epoch=epoch))


def test_eval_items_are_never_mixed(index):
    dataset = DetectionDataset(index, train=False, mixup=MixupOptions(prob=1.0))
    assert dataset.mixup is None and all("weights" not in t for _, t in items(dataset))


def test_weights_follow_their_boxes_through_crops_and_flips():
    g = torch.Generator().manual_seed(0)
    image_a = tv_tensors.Image(torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8, generator=g))
    image_b = tv_tensors.Image(torch.randint(0, 256, (3, 36, 24), dtype=torch.uint8, generator=g))
    a = {
        "boxes": bb([[2, 3, 10, 20], [30, 0, 40, 30], [12, 12, 28, 18]], (30, 40)),
        "labels": torch.ones(3, dtype=torch.int64),
        "ignore_boxes": bb([[20, 5, 25, 15]], (30, 40)),
        "image_id": torch.tensor(1),
    }
    b = {
        "boxes": bb([[0, 20, 12, 36], [5, 5, 20, 15]], (36, 24)),
        "labels": torch.full((2,), 2, dtype=torch.int64),
        "ignore_boxes": bb([], (36, 24)),
        "image_id": torch.tensor(2),
    }
    pipeline = build_train_transforms(0.5, AugmentOptions(steps=AUGMENT_STEPS, scale_jitter=(0.5, 2.0)))
    counts = set()
    for seed in range(40):
        lam = 0.2 + 0.015 * seed
        torch.manual_seed(seed)
        image, target = pipeline(*mixup_pair(image_a, a, image_b, b, lam))
        height, width = image.shape[-2:]
        boxes = target["boxes"].as_subclass(Tensor)
        assert bool((boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all() and (boxes >= 0).all())
        expected = torch.where(target["labels"] == 1, torch.tensor(lam), torch.tensor(1 - lam)).float()
        assert torch.equal(target["weights"], expected)
        counts.add(len(boxes))
    assert len(counts) > 1  # the crops did drop boxes (and their weights) in some draws


def test_model_transform_collate_and_device_move_keep_the_weights(index):
    dataset = DetectionDataset(index, train=True, seed=0, mixup=MixupOptions(prob=1.0))
    images, targets = collate_detection([dataset[0], dataset[1]])
    weights = [t["weights"].clone() for t in targets]
    moved = trainer.to_device(targets, torch.device("cpu"))
    assert all(torch.equal(t["weights"], w) for t, w in zip(moved, weights))
    resized, out = DetectionTransform(32, 64).train()(images, moved)
    assert out is not None and all(torch.equal(t["weights"], w) for t, w in zip(out, weights))
    assert all(t["boxes"].shape[0] == w.shape[0] for t, w in zip(out, weights))


def test_config_options_and_their_validation():
    data = load_config(
        None, ["data.mixup_prob=0.5", "data.mixup_alpha=2", "data.mixup_off_last_epochs=3"]
    ).data
    assert MixupOptions.from_config(data, max_iter=10, iters_per_epoch=2) == MixupOptions(0.5, 2.0, 2)
    defaults = load_config(None, []).data
    assert (defaults.mixup_prob, defaults.mixup_alpha, defaults.mixup_off_last_epochs) == (0.0, 1.5, 0)
    assert MixupOptions.from_config(defaults, 10, 2) == MixupOptions(0.0, 1.5, None)
    for override, message in [
        ("data.mixup_prob=1.5", r"data\.mixup_prob: must be in \[0, 1\]"),
        ("data.mixup_prob=-0.1", r"data\.mixup_prob: must be in \[0, 1\]"),
        ("data.mixup_alpha=0", r"data\.mixup_alpha: must be > 0"),
        ("data.mixup_off_last_epochs=-1", r"data\.mixup_off_last_epochs: must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])


def test_the_trainer_mixes_until_the_last_epochs(fast_overrides, monkeypatch):
    """6 training images, batches of 2: 3 iterations an epoch; 5 iterations = epochs 0 and 1 (partial)."""
    seen: list[tuple[int, bool]] = []
    built: list[DetectionDataset] = []

    class Spy(DetectionDataset):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

        def __getitem__(self, i: int):
            item = super().__getitem__(i)
            seen.append((self.epoch, "weights" in item[1]))
            return item

    monkeypatch.setattr(tasks, "DetectionDataset", Spy)  # the detection task builds it
    overrides = [
        "solver.max_iter=5",
        "train.eval_at_end=false",
        "data.mixup_prob=1.0",
        "data.mixup_off_last_epochs=1",
        f"data.augment=[{', '.join(AUGMENT_STEPS)}]",
    ]
    result = training.train(load_config(None, [*fast_overrides, *overrides]))
    assert result.iterations == 5 and result.skipped_steps == 0
    assert built[0].mixup == MixupOptions(prob=1.0, alpha=1.5, off_from_epoch=1)
    assert seen == [(0, True)] * 6 + [(1, False)] * 4
