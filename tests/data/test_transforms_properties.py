"""Property-based tests (hypothesis) of the augmentation pipelines and the model's resize over random
image sizes and boxes: never crash, keep boxes valid and inside the image (the flip keeps every box
and label, the cropping steps drop boxes together with their labels and weights); a certain flip
mirrors the boxes exactly."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors

from hardmine.data.transforms import (
    AUGMENT_STEPS,
    AugmentOptions,
    build_eval_transforms,
    build_train_transforms,
)
from hardmine.models.transform import DetectionTransform

SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def boxes_in(draw: st.DrawFn, width: int, height: int, max_count: int = 8) -> torch.Tensor:
    """[N, 4] valid xyxy boxes inside a width x height image (degenerate ones included)."""
    n = draw(st.integers(0, max_count))
    xs = draw(st.lists(st.tuples(st.floats(0, width), st.floats(0, width)), min_size=n, max_size=n))
    ys = draw(st.lists(st.tuples(st.floats(0, height), st.floats(0, height)), min_size=n, max_size=n))
    rows = [(min(x), min(y), max(x), max(y)) for x, y in zip(xs, ys)]
    return torch.tensor(rows, dtype=torch.float32).reshape(n, 4)


@st.composite
def samples(draw: st.DrawFn, min_side: int = 1) -> tuple[tv_tensors.Image, dict]:
    width, height = draw(st.integers(min_side, 48)), draw(st.integers(min_side, 48))
    image = tv_tensors.Image(torch.randint(0, 256, (3, height, width), dtype=torch.uint8))
    boxes = draw(boxes_in(width, height))
    ignore = draw(boxes_in(width, height, max_count=3))
    canvas = (height, width)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas),
        "labels": torch.randint(1, 5, (len(boxes),)),
        "ignore_boxes": tv_tensors.BoundingBoxes(ignore, format="XYXY", canvas_size=canvas),
        "image_id": torch.tensor(draw(st.integers(0, 10**6))),
    }
    return image, target


def assert_valid(boxes: torch.Tensor, width: int, height: int) -> None:
    assert boxes.dtype == torch.float32 and boxes.shape[-1] == 4
    assert bool(torch.isfinite(boxes).all())
    assert bool((boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all())
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all())


@SETTINGS
@given(sample=samples(), prob=st.sampled_from([0.0, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_train_pipeline_keeps_boxes_valid_and_mirrors_them(sample, prob, seed):
    image, target = sample
    height, width = image.shape[-2:]
    torch.manual_seed(seed)
    out_image, out = build_train_transforms(prob)(image, {k: v.clone() for k, v in target.items()})
    assert out_image.shape == image.shape and out_image.dtype == torch.float32
    assert 0.0 <= float(out_image.min()) and float(out_image.max()) <= 1.0
    assert torch.equal(out["labels"], target["labels"]) and torch.equal(out["image_id"], target["image_id"])
    for key in ("boxes", "ignore_boxes"):
        assert out[key].shape == target[key].shape
        assert_valid(out[key].as_subclass(torch.Tensor), width, height)
    if prob == 1.0:
        assert torch.allclose(out_image, image.flip(-1).float() / 255)
        x1, y1, x2, y2 = target["boxes"].as_subclass(torch.Tensor).unbind(-1)
        mirrored = torch.stack([width - x2, y1, width - x1, y2], dim=-1)
        assert torch.allclose(out["boxes"].as_subclass(torch.Tensor), mirrored)
    if prob == 0.0:
        assert torch.equal(out["boxes"], target["boxes"])


@SETTINGS
@given(
    sample=samples(),
    steps=st.lists(st.sampled_from(AUGMENT_STEPS), unique=True),
    zoom=st.tuples(st.floats(0.05, 1.0), st.floats(1.0, 3.0)),
    seed=st.integers(0, 2**16),
)
def test_every_augmentation_keeps_boxes_valid_inside_the_image_and_aligned(sample, steps, zoom, seed):
    image, target = sample
    target = {k: v.clone() for k, v in target.items()}
    target["weights"] = target["labels"].float() / 8  # a per-box entry that must follow its box
    pipeline = build_train_transforms(0.5, AugmentOptions(steps=tuple(steps), scale_jitter=zoom))
    torch.manual_seed(seed)
    out_image, out = pipeline(image, target)
    height, width = out_image.shape[-2:]
    assert (
        out_image.dtype == torch.float32 and 0.0 <= float(out_image.min()) and float(out_image.max()) <= 1.0
    )
    assert torch.equal(out["weights"], out["labels"].float() / 8)
    assert out["boxes"].shape[0] == out["labels"].shape[0] <= target["boxes"].shape[0]
    for key in ("boxes", "ignore_boxes"):
        assert_valid(out[key].as_subclass(torch.Tensor), width, height)
        assert tuple(out[key].canvas_size) == (height, width)
        if {"scale_jitter", "iou_crop"} & set(steps):  # cropping steps drop what is under 1 px
            sides = out[key][:, 2:] - out[key][:, :2]
            assert bool((sides >= 1).all())


@SETTINGS
@given(sample=samples())
def test_eval_pipeline_changes_only_the_dtype(sample):
    image, target = sample
    out_image, out = build_eval_transforms()(image, target)
    assert torch.allclose(out_image, image.float() / 255)
    assert all(torch.equal(out[k], target[k]) for k in target)


@SETTINGS
# (torchvision's resize turns a side of a few pixels into 0 when the other side is scaled down: a
# 1 x 17 image at max_size 16; real images are not that thin, so sides start at 8 here)
@given(sample=samples(min_side=8), min_size=st.integers(16, 64), max_size=st.integers(16, 96))
def test_model_resize_scales_every_box_entry_into_the_resized_image(sample, min_size, max_size):
    image, target = sample
    resize = DetectionTransform(min_size, max_size).eval()
    plain = {k: v.as_subclass(torch.Tensor).clone() for k, v in target.items()}
    resized, out = resize.resize(image.float() / 255, plain)
    assert out is not None
    height, width = resized.shape[-2:]
    assert max(height, width) <= max(max_size, 1) + 1 and min(height, width) >= 1
    for key in ("boxes", "ignore_boxes"):
        assert out[key].shape == target[key].shape
        assert_valid(out[key], width + 1e-3, height + 1e-3)
