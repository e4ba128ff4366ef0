"""Training augmentation steps (`data.augment`): exact crops and zooms, sanitizing of every box entry,
the default pipeline bit for bit as before, and the config's validation."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from hardmine.config import load_config
from hardmine.data.transforms import (
    AUGMENT_STEPS,
    BOX_KEYS,
    AugmentOptions,
    IoUCrop,
    RandomZoom,
    SanitizeTargets,
    build_train_transforms,
)
from hardmine.errors import ConfigError

H, W = 30, 40


def bb(rows: list[list[float]], canvas: tuple[int, int] = (H, W)) -> tv_tensors.BoundingBoxes:
    return tv_tensors.BoundingBoxes(
        torch.tensor(rows, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=canvas
    )


def sample(canvas: tuple[int, int] = (H, W)) -> tuple[tv_tensors.Image, dict[str, Tensor]]:
    """A random uint8 image with objects (labels 1..4, weights 0.1..0.4) and every other box entry."""
    g = torch.Generator().manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, *canvas), dtype=torch.uint8, generator=g))
    target = {
        "boxes": bb([[2, 3, 10, 20], [30, 0, 40, 30], [12, 12, 28, 18], [0, 25, 5, 30]], canvas),
        "labels": torch.tensor([1, 2, 3, 4]),
        "weights": torch.tensor([0.1, 0.2, 0.3, 0.4]),
        "ignore_boxes": bb([[20, 5, 25, 15]], canvas),
        "proposals": bb([[0, 0, 40, 30], [5, 5, 15, 15], [25, 20, 39, 29]], canvas),
        "hard_negatives": bb([[1, 1, 6, 6]], canvas),
        "image_id": torch.tensor(7),
    }
    return image, target


def plain(target: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.as_subclass(Tensor) for k, v in target.items()}


def assert_valid_target(image: Tensor, target: dict[str, Tensor], min_size: float = 0.0) -> None:
    """Every box entry inside the image and (when `min_size`) not degenerate; per-box entries aligned."""
    height, width = image.shape[-2:]
    for key in BOX_KEYS:
        boxes = target[key].as_subclass(Tensor)
        assert boxes.dtype == torch.float32 and boxes.shape[1:] == (4,)
        assert bool(
            (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        )
        assert bool(((boxes[:, 2:] - boxes[:, :2]) >= min_size).all()), key
        if isinstance(target[key], tv_tensors.BoundingBoxes):
            assert tuple(target[key].canvas_size) == (height, width)
    assert target["labels"].shape[0] == target["weights"].shape[0] == target["boxes"].shape[0]


def test_default_pipeline_is_the_old_one_bit_for_bit():
    image, target = sample()
    for prob, seed in itertools.product((0.0, 0.5, 1.0), range(8)):
        torch.manual_seed(seed)
        out_image, out = build_train_transforms(prob)(image, dict(target))
        after = torch.rand(1)
        torch.manual_seed(seed)
        reference = v2.Compose([v2.RandomHorizontalFlip(p=prob), v2.ToDtype(torch.float32, scale=True)])
        ref_image, ref = reference(image, dict(target))
        assert torch.equal(out_image, ref_image) and out_image.dtype == torch.float32
        assert set(out) == set(ref) and all(torch.equal(out[k], ref[k]) for k in ref)
        assert torch.equal(after, torch.rand(1))  # the same random draws, no more
    steps = build_train_transforms(0.5, AugmentOptions()).transforms
    assert [type(s) for s in steps] == [v2.RandomHorizontalFlip, v2.ToDtype]


@pytest.mark.parametrize(
    "steps",
    [combo for n in range(len(AUGMENT_STEPS) + 1) for combo in itertools.combinations(AUGMENT_STEPS, n)],
)
def test_every_combination_keeps_boxes_inside_the_image_and_entries_aligned(steps):
    pipeline = build_train_transforms(0.5, AugmentOptions(steps=steps, scale_jitter=(0.4, 2.0)))
    crops = any(s in steps for s in ("scale_jitter", "iou_crop"))
    image, target = sample()
    for seed in range(6):
        torch.manual_seed(seed)
        out_image, out = pipeline(image, dict(target))
        assert out_image.dtype == torch.float32 and 0 <= out_image.min() and out_image.max() <= 1
        assert_valid_target(out_image, out, min_size=1.0 if crops else 0.0)
        # each surviving object keeps its own label and weight
        assert torch.equal(out["weights"], out["labels"].float() / 10)
        assert torch.equal(out["image_id"], target["image_id"])
        if not crops:
            assert out_image.shape[-2:] == (H, W) and out["boxes"].shape == (4, 4)


def test_geometric_steps_run_on_uint8():
    pipeline = build_train_transforms(1.0, AugmentOptions(steps=AUGMENT_STEPS))
    *augmenting, last = pipeline.transforms
    assert isinstance(last, v2.ToDtype)
    image, target = sample()
    torch.manual_seed(0)
    for step in augmenting:
        image, target = step(image, target)
        assert image.dtype == torch.uint8


def test_iou_crop_drops_objects_centred_outside_and_clips_every_entry(monkeypatch):
    crop = IoUCrop()
    image, _ = sample()
    target = {
        # kept | centre (35, 35) outside | centre (22.5, 22.5) outside, though partly inside | kept, clipped
        "boxes": bb([[2, 2, 8, 8], [30, 30, 40, 40], [15, 15, 30, 30], [10, 0, 25, 10]]),
        "labels": torch.tensor([1, 2, 3, 4]),
        "weights": torch.tensor([0.5, 0.6, 0.7, 0.8]),
        "ignore_boxes": bb([[18, 18, 40, 30], [25, 25, 30, 30]]),  # clipped | outside: degenerate
        "proposals": bb([[0, 0, 40, 30], [19.5, 0, 30, 5]]),  # clipped | 0.5 px wide after clipping
        "hard_negatives": bb([[25, 0, 30, 5]]),  # outside
        "image_id": torch.tensor(1),
    }
    centres = (target["boxes"][:, :2] + target["boxes"][:, 2:]) / 2
    fixed = {"top": 0, "left": 0, "height": 20, "width": 20, "is_within_crop_area": (centres < 20).all(dim=1)}
    monkeypatch.setattr(crop, "make_params", lambda flat_inputs: fixed)
    out_image, out = SanitizeTargets()(*crop(image, dict(target)))
    assert torch.equal(out_image, image[:, :20, :20])
    out = plain(out)
    assert out["boxes"].tolist() == [[2, 2, 8, 8], [10, 0, 20, 10]]
    assert out["labels"].tolist() == [1, 4]
    assert out["weights"].tolist() == [0.5, 0.800000011920929]
    assert out["ignore_boxes"].tolist() == [[18, 18, 20, 20]]
    assert out["proposals"].tolist() == [[0, 0, 20, 20]]
    assert out["hard_negatives"].shape == (0, 4)
    assert torch.equal(out["image_id"], target["image_id"])


def test_iou_crop_samples_from_the_objects_only(monkeypatch):
    """torchvision's sampler sees the image and "boxes", never the other box entries."""
    seen = []
    original = v2.RandomIoUCrop.make_params

    def spy(self, flat_inputs):
        seen.append(flat_inputs)
        return original(self, flat_inputs)

    monkeypatch.setattr(v2.RandomIoUCrop, "make_params", spy)
    image, target = sample()
    torch.manual_seed(0)
    IoUCrop()(image, target)
    assert len(seen) == 1 and seen[0][0] is image and seen[0][1] is target["boxes"] and len(seen[0]) == 2


def test_zoom_out_places_the_shrunk_image_and_its_box_together():
    image = tv_tensors.Image(torch.full((3, 8, 12), 255, dtype=torch.uint8))
    target = {"boxes": bb([[0, 0, 12, 8]], (8, 12)), "labels": torch.tensor([1])}
    offsets = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out = RandomZoom((0.5, 0.5))(image, dict(target))
        assert out_image.shape == (3, 8, 12) and out["boxes"].canvas_size == (8, 12)
        ys, xs = torch.nonzero(out_image[0] == 255, as_tuple=True)
        assert int((out_image[0] > 0).sum()) == 4 * 6  # exactly the 4 x 6 shrunk image, black elsewhere
        x1, y1, x2, y2 = out["boxes"][0].tolist()
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        offsets.add((x1, y1))
    assert len(offsets) > 3  # at random places


def test_zoom_in_cuts_a_window_and_clips_the_boxes():
    image, _ = sample()
    enlarged = v2.functional.resize(image, [2 * H, 2 * W], antialias=True)
    windows = {
        (left, top): enlarged[:, top : top + H, left : left + W]
        for left, top in itertools.product(range(W + 1), range(H + 1))
    }
    # the whole image | a small corner box, 8 x 8 after zooming
    target = {"boxes": bb([[0, 0, W, H], [0, 0, 4, 4]]), "labels": torch.tensor([1, 2])}
    corner_kept = []
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out = SanitizeTargets()(*RandomZoom((2.0, 2.0))(image, dict(target)))
        (left, top), *others = [
            corner for corner, window in windows.items() if torch.equal(window, out_image)
        ]
        assert not others  # the output is exactly one window of the enlarged image
        assert out["boxes"][0].tolist() == [0, 0, W, H]  # the whole image still covers the window
        # the corner box survives only while at least 1 px of it is in the window, clipped to it
        if left <= 7 and top <= 7:
            assert out["labels"].tolist() == [1, 2] and out["boxes"][1].tolist() == [0, 0, 8 - left, 8 - top]
        else:
            assert out["labels"].tolist() == [1]
        corner_kept.append(out["labels"].numel() == 2)
    assert any(corner_kept) and not all(corner_kept)


def test_sanitize_drops_degenerate_boxes_with_their_labels_and_weights():
    image = tv_tensors.Image(torch.zeros((3, 10, 10), dtype=torch.uint8))
    target = {
        "boxes": bb([[1, 1, 5, 5], [3, 3, 3.5, 8], [-5, 2, 12, 4], [11, 0, 12, 5]], (10, 10)),
        "labels": torch.tensor([1, 2, 3, 4]),
        "weights": torch.tensor([1.0, 0.5, 0.25, 0.125]),
        "ignore_boxes": bb([[0, 0, 0, 10], [2, 2, 4, 4]], (10, 10)),
        "image_id": torch.tensor(3),
    }
    _, out = SanitizeTargets()(image, target)
    assert out["boxes"].tolist() == [[1, 1, 5, 5], [0, 2, 10, 4]]
    assert out["labels"].tolist() == [1, 3] and out["weights"].tolist() == [1.0, 0.25]
    assert out["ignore_boxes"].tolist() == [[2, 2, 4, 4]]
    with pytest.raises(ValueError, match=r"target\['weights'\] has 1 entries for 4 boxes"):
        SanitizeTargets()(image, dict(target, weights=torch.ones(1)))


def test_unknown_steps_are_refused_by_the_builder():
    with pytest.raises(ValueError, match="unknown augmentation step 'rotate'"):
        build_train_transforms(0.5, AugmentOptions(steps=("rotate",)))
    with pytest.raises(ValueError, match="'hflip' is listed twice"):
        build_train_transforms(0.5, AugmentOptions(steps=("hflip", "hflip")))


def test_config_options_reach_the_pipeline():
    cfg = load_config(
        None,
        [
            "data.augment=[iou_crop, color_jitter, hflip]",
            "data.iou_crop_scale=[0.5, 0.9]",
            "data.color_jitter=[0.1, 0.2, 0.3, 0.04]",
            "data.hflip_prob=0.25",
        ],
    )
    options = AugmentOptions.from_config(cfg.data)
    assert options.steps == ("iou_crop", "color_jitter", "hflip")
    steps = build_train_transforms(cfg.data.hflip_prob, options).transforms
    assert [type(s) for s in steps] == [
        v2.RandomHorizontalFlip,
        v2.ColorJitter,
        IoUCrop,
        SanitizeTargets,
        v2.ToDtype,
    ]
    assert steps[0].p == 0.25 and (steps[2].min_scale, steps[2].max_scale) == (0.5, 0.9)
    assert steps[1].brightness == pytest.approx((0.9, 1.1)) and steps[1].hue == pytest.approx((-0.04, 0.04))
    assert load_config(None, []).data.augment == ["hflip"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.augment=[hflip, rotate]",
            r"data\.augment: unknown step 'rotate'; choose from hflip, color_jitter",
        ),
        ("data.augment=[iou_crop, iou_crop]", r"data\.augment: 'iou_crop' is listed twice"),
        ("data.color_jitter=[0.1, 0.2, 0.3]", r"data\.color_jitter: needs 4 values >= 0"),
        ("data.color_jitter=[0.1, -0.2, 0.3, 0.1]", r"data\.color_jitter: needs 4 values >= 0"),
        ("data.color_jitter=[0.1, 0.2, 0.3, 0.6]", r"data\.color_jitter: hue must be <= 0.5"),
        ("data.scale_jitter=[0.0, 1.0]", r"data\.scale_jitter: needs \[lo, hi\] with 0 < lo <= hi"),
        ("data.scale_jitter=[1.5, 1.0]", r"data\.scale_jitter: needs \[lo, hi\]"),
        ("data.scale_jitter=[1.5]", r"data\.scale_jitter: needs \[lo, hi\]"),
        ("data.iou_crop_scale=[0.3, 1.5]", r"data\.iou_crop_scale: needs \[lo, hi\] with 0 < lo <= hi <= 1"),
        ("data.augment=flip", r"data\.augment: expected list"),
    ],
)
def test_invalid_augmentation_options_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
