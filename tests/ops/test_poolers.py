"""hardmine.ops.MultiScaleRoIAlign: torchvision's level mapping and values, one call for all levels."""

from __future__ import annotations

import importlib
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

import hardmine.ops.poolers as poolers
from hardmine.ops import MultiScaleRoIAlign

NAMES = ["0", "1", "2"]


def pyramid(size: int, channels: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0) -> OrderedDict:
    """Levels at strides 8, 16, 32 of a `size` px batch of 2, plus a level the poolers must skip."""
    g = torch.Generator().manual_seed(seed)
    levels = OrderedDict(
        (name, torch.randn(2, channels, size // s, size // s, generator=g, dtype=dtype))
        for name, s in zip(NAMES, (8, 16, 32))
    )
    levels["pool"] = torch.randn(2, channels, size // 64, size // 64, generator=g, dtype=dtype)
    return levels


def boxes_of_all_sizes(size: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Boxes from 4 px to the whole image (so every level gets some), one image's partly outside."""
    sides = torch.tensor([4.0, 20, 60, 150, 224, 300, 448, 600], dtype=dtype)
    first = torch.stack([sides * 0.1, sides * 0.2, sides * 0.1 + sides, sides * 0.2 + sides * 0.7], 1)
    second = first.flip(0) - 30
    return [first.clamp(max=size), second]


def pool_both(features, boxes, image_shapes, **kwargs):
    """Values and feature gradients of torchvision's pooler and hardmine's, on copies of `features`."""
    results = []
    for cls in (TorchvisionMultiScaleRoIAlign, MultiScaleRoIAlign):
        leaves = OrderedDict((k, v.detach().clone().requires_grad_()) for k, v in features.items())
        pooler = cls(**kwargs)
        out = pooler(leaves, boxes, image_shapes)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape))
        grads = [leaves[k].grad if leaves[k].grad is not None else torch.zeros_like(leaves[k]) for k in NAMES]
        results.append((pooler, out, grads))
    return results


@pytest.mark.parametrize("chunk_floats", [None, 3 * 3 * 35])  # default; 3 RoIs (3 channels, 7x5) per chunk
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_values_and_gradients_equal_torchvision_on_a_pyramid(sampling_ratio, chunk_floats, monkeypatch):
    if chunk_floats is not None:
        monkeypatch.setattr(importlib.import_module("hardmine.ops.roi_align"), "CHUNK_FLOATS", chunk_floats)
    features, boxes = pyramid(512), boxes_of_all_sizes(512)
    (theirs, ref, ref_grads), (ours, out, grads) = pool_both(
        features,
        boxes,
        [(512, 512), (480, 500)],
        featmap_names=NAMES,
        output_size=(7, 5),
        sampling_ratio=sampling_ratio,
    )
    assert torch.bincount(ours.map_levels(boxes), minlength=3).min() > 0  # all three levels used
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    for grad, ref_grad in zip(grads, ref_grads):
        assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-12)


def test_level_mapping_is_torchvisions():
    features, boxes = pyramid(320), boxes_of_all_sizes(320)
    (theirs, _, _), (ours, _, _) = pool_both(
        features, boxes, [(320, 320)] * 2, featmap_names=NAMES, output_size=7, sampling_ratio=2
    )
    assert isinstance(ours, TorchvisionMultiScaleRoIAlign)
    assert ours.scales == theirs.scales == [1 / 8, 1 / 16, 1 / 32]
    assert isinstance(ours.map_levels, LevelMapper)
    mapper = ours.map_levels
    assert (mapper.k_min, mapper.k_max, mapper.s0, mapper.lvl0, mapper.eps) == (3, 5, 224, 4, 1e-6)
    assert torch.equal(ours.map_levels(boxes), theirs.map_levels(boxes))


def test_canonical_scale_and_level_are_passed_on():
    features, boxes = pyramid(320), boxes_of_all_sizes(320)
    (theirs, ref, _), (ours, out, _) = pool_both(
        features,
        boxes,
        [(320, 320)] * 2,
        featmap_names=NAMES,
        output_size=3,
        sampling_ratio=2,
        canonical_scale=64,
        canonical_level=3,
    )
    assert (ours.map_levels.s0, ours.map_levels.lvl0) == (64, 3)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)


def test_one_level_and_images_without_boxes():
    features = pyramid(320)
    boxes = [
        torch.zeros(0, 4, dtype=torch.float64),
        torch.tensor([[3.0, 4, 90, 50], [0, 0, 320, 320]], dtype=torch.float64),
    ]
    (_, ref, ref_grads), (_, out, grads) = pool_both(
        features, boxes, [(320, 320)] * 2, featmap_names=["1"], output_size=2, sampling_ratio=-1
    )
    assert out.shape == (2, 3, 2, 2)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    assert torch.allclose(grads[1], ref_grads[1], rtol=0, atol=1e-12)
    empty = [torch.zeros(0, 4, dtype=torch.float64)] * 2
    (_, ref, _), (_, out, _) = pool_both(
        features, empty, [(320, 320)] * 2, featmap_names=NAMES, output_size=2, sampling_ratio=2
    )
    assert out.shape == ref.shape == (0, 3, 2, 2)


def test_like_copies_a_torchvision_poolers_settings_and_state():
    theirs = TorchvisionMultiScaleRoIAlign(NAMES, (7, 5), 3, canonical_scale=112, canonical_level=3)
    features, boxes = pyramid(320), boxes_of_all_sizes(320)
    expected = theirs(features, boxes, [(320, 320)] * 2)
    ours = MultiScaleRoIAlign.like(theirs)
    assert (ours.featmap_names, ours.output_size, ours.sampling_ratio) == (NAMES, (7, 5), 3)
    assert (ours.canonical_scale, ours.canonical_level) == (112, 3)
    assert ours.scales == theirs.scales and ours.map_levels is theirs.map_levels
    assert torch.allclose(ours(features, boxes, [(320, 320)] * 2), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_maps_are_pooled_in_float32_and_cast_back(dtype):
    features = OrderedDict((k, v.to(dtype)) for k, v in pyramid(320).items())
    boxes = [b.to(dtype) for b in boxes_of_all_sizes(320)]
    ours = MultiScaleRoIAlign(NAMES, 3, 2)(features, boxes, [(320, 320)] * 2)
    full = OrderedDict((k, v.float()) for k, v in features.items())
    expected = TorchvisionMultiScaleRoIAlign(NAMES, 3, 2)(full, [b.float() for b in boxes], [(320, 320)] * 2)
    assert ours.dtype == dtype
    assert torch.equal(ours, expected.to(dtype))


def test_bf16_autocast_pools_through_hardmines_kernel(monkeypatch):
    calls = []
    original = poolers.pool_levels

    def counting(*args, **kwargs):
        calls.append(args[0][0].dtype)
        return original(*args, **kwargs)

    monkeypatch.setattr(poolers, "pool_levels", counting)
    features, boxes = pyramid(320, dtype=torch.float32), boxes_of_all_sizes(320, dtype=torch.float32)
    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = OrderedDict((k, conv(v)) for k, v in features.items())
        out = MultiScaleRoIAlign(NAMES, 3, 2)(maps, boxes, [(320, 320)] * 2)
    assert maps["0"].dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    assert calls == [torch.float32]


@settings(max_examples=25, deadline=None)
@given(
    size=st.sampled_from([128, 192, 320]),
    boxes=st.lists(
        st.lists(
            st.tuples(*[st.floats(-40.0, 360.0, allow_nan=False)] * 2, *[st.floats(0.0, 400.0)] * 2),
            max_size=8,
        ),
        min_size=2,
        max_size=2,
    ),
    sampling_ratio=st.integers(-1, 3),
    seed=st.integers(0, 1000),
)
def test_float32_matches_torchvision(size, boxes, sampling_ratio, seed):
    tensors = [torch.tensor([[x, y, x + w, y + h] for x, y, w, h in image]).reshape(-1, 4) for image in boxes]
    (_, ref, ref_grads), (_, out, grads) = pool_both(
        pyramid(size, dtype=torch.float32, seed=seed),
        tensors,
        [(size, size)] * 2,
        featmap_names=NAMES,
        output_size=(3, 2),
        sampling_ratio=sampling_ratio,
    )
    assert torch.allclose(out, ref, rtol=0, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-4)
