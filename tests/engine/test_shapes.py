"""Random shapes: the size of each iteration is a pure function of (seed, iteration // period)."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from hardmine.config import load_config
from hardmine.engine import training
from hardmine.engine.shapes import RandomShapes
from hardmine.models.transform import DetectionTransform, scaled_max_size

SIZES = (256, 288, 320, 352, 384)


def test_size_is_fixed_within_a_period_and_covers_every_size():
    shapes = RandomShapes(SIZES, period=10, seed=3)
    drawn = [shapes.size_at(t) for t in range(2000)]
    for block in range(200):
        assert len(set(drawn[block * 10 : (block + 1) * 10])) == 1
    counts = {s: drawn[::10].count(s) for s in SIZES}
    assert set(counts) == set(SIZES) and all(25 <= c <= 55 for c in counts.values())  # 200 draws, 40 each
    assert [shapes.size_at(t) for t in range(2000)] == drawn  # a resumed run sees the same sizes


def test_every_process_draws_the_same_sizes_whatever_its_rng_state():
    """Two ranks build their own RandomShapes after consuming their RNGs differently."""
    per_rank = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        np.random.seed(rank)
        torch.rand(17 * (rank + 1))  # ranks draw different amounts (samplers, augmentation)
        shapes = RandomShapes(SIZES, period=1, seed=0)
        per_rank.append([shapes.size_at(t) for t in range(50)])
    assert per_rank[0] == per_rank[1]
    assert len(set(per_rank[0])) > 1
    assert [RandomShapes(SIZES, seed=1).size_at(t) for t in range(50)] != per_rank[0]  # seeds differ


def test_one_size_is_inactive_and_leaves_torchvision_in_charge():
    model = torch.nn.Module()
    model.transform = DetectionTransform(320, 320)
    assert RandomShapes((320,)).apply(model, 5) is None
    assert model.transform.train_size is None  # torchvision's own resize: every image to 320
    batch, _ = model.transform.train()([torch.rand(3, 160, 160)])
    assert batch.image_sizes == [(320, 320)]


def test_a_model_without_a_detection_transform_is_refused():
    with pytest.raises(TypeError, match="random shapes need a DetectionTransform; Module has none"):
        RandomShapes(SIZES).apply(torch.nn.Module(), 0)


def test_the_transform_resizes_the_batch_to_the_drawn_size_with_a_proportional_cap():
    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transform = DetectionTransform(SIZES, 320)

    model = Model().train()
    shapes = RandomShapes(SIZES, seed=0)
    images = [torch.rand(3, 200, 400), torch.rand(3, 300, 300)]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 100.0, 100.0]]), "labels": torch.tensor([1])}] * 2
    for t in range(8):
        size = shapes.apply(model, t)
        cap = scaled_max_size(320, size, 384)
        batch, out = model.transform(images, targets)
        # image 0 (200 x 400): the cap binds, longer side = cap; image 1 (300 x 300): shorter side = size
        scale0 = min(size / 200, cap / 400)
        assert batch.image_sizes[0] == (int(200 * scale0), int(400 * scale0))
        assert batch.image_sizes[1] == (min(size, cap), min(size, cap))
        h, w = batch.image_sizes[0]
        torch.testing.assert_close(out[0]["boxes"], torch.tensor([[0.0, 0.0, 100 * w / 400, 100 * h / 200]]))
    model.eval()
    batch, _ = model.transform(images)
    assert batch.image_sizes[1] == (320, 320)  # inference: the last size, capped by max_size itself


def test_cap_scales_in_proportion_to_the_size():
    assert scaled_max_size(320, 384, 384) == 320
    assert scaled_max_size(320, 192, 384) == 160
    assert scaled_max_size(1333, 480, 800) == 800


@pytest.mark.parametrize(("sizes", "period"), [((), 1), ((0, 320), 1), ((320,), 0)])
def test_bad_settings_are_refused(sizes, period):
    with pytest.raises(ValueError):
        RandomShapes(sizes, period)


def test_training_logs_the_drawn_size_of_every_batch(fast_overrides):
    sizes = [64, 96, 128]
    cfg = load_config(
        None,
        [
            *fast_overrides,
            f"model.min_size={sizes}".replace(" ", ""),
            "model.max_size=128",
            "model.size_period=2",
            "solver.max_iter=6",
            "train.log_period=1",
            "train.eval_at_end=false",
        ],
    )
    training.train(cfg)
    rows = list(csv.DictReader((Path(cfg.output_dir) / "log.csv").open()))
    expected = RandomShapes(tuple(sizes), period=2, seed=cfg.train.seed)
    assert [int(float(r["input_size"])) for r in rows] == [expected.size_at(t) for t in range(6)]
