"""hardmine.ops.roi_align: hand-computed values and gradients, and property tests (hypothesis)
against torchvision.ops.roi_align over random maps, boxes and options."""

from __future__ import annotations

import importlib
import math
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import roi_align as torchvision_roi_align

from hardmine.ops.roi_align import pool_levels, roi_align, runs_here

#: the module (the package's `roi_align` attribute is the function)
roi_align_module = importlib.import_module("hardmine.ops.roi_align")

SETTINGS = settings(max_examples=60, deadline=None)


def grid_4x4() -> torch.Tensor:
    """[1, 1, 4, 4] with value 4 y + x at pixel (y, x)."""
    return torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)


def pool_one(box: list[float], aligned: bool = False) -> tuple[float, torch.Tensor]:
    """One 1x1 bin, one sample, on `grid_4x4`: the value and the gradient of the input."""
    x = grid_4x4().requires_grad_()
    out = roi_align(x, torch.tensor([[0.0, *box]], dtype=torch.float64), 1, 1.0, 1, aligned)
    out.sum().backward()
    return out.item(), x.grad[0, 0]


def test_sample_at_a_pixel_reads_that_pixel():
    value, grad = pool_one([0, 0, 2, 2])  # the sample lies at (1, 1)
    assert value == 5.0
    assert grad.nonzero().tolist() == [[1, 1]] and grad[1, 1] == 1.0


def test_aligned_shifts_the_box_by_half_a_pixel():
    assert pool_one([0.5, 0.5, 2.5, 2.5], aligned=True)[0] == 5.0
    assert pool_one([0.5, 0.5, 2.5, 2.5], aligned=False)[0] == 0.25 * (5 + 6 + 9 + 10)


def test_sample_between_the_last_row_and_the_border_reads_the_last_row_alone():
    value, grad = pool_one([0, 3, 1, 4])  # sample at (y, x) = (3.5, 0.5)
    assert value == 0.5 * (12 + 13)
    assert grad[3, :2].tolist() == [0.5, 0.5] and grad.sum() == 1.0


def test_sample_above_the_first_row_within_one_pixel_is_clamped_to_it():
    value, grad = pool_one([0, -1.5, 1, 0.5])  # sample at (-0.5, 0.5)
    assert value == 0.5 * (0 + 1)
    assert grad[0, :2].tolist() == [0.5, 0.5] and grad.sum() == 1.0


@pytest.mark.parametrize("box", [[0, 4, 1, 5], [0, -3, 1, -1], [5, 0, 6, 1]])
def test_sample_more_than_the_border_out_contributes_nothing(box):
    value, grad = pool_one(box)  # samples at y = 4.5, y = -2, x = 5.5
    assert value == 0.0 and grad.abs().sum() == 0.0


def test_average_over_the_sampling_grid():
    x = grid_4x4().requires_grad_()
    # a 2x2 grid in the bin [0, 2] x [0, 2]: samples at 0.5 and 1.5 on both axes; 4 y + x is linear,
    # so each sample reads 4 y + x exactly
    out = roi_align(x, torch.tensor([[0.0, 0, 0, 2, 2]], dtype=torch.float64), 1, 1.0, 2)
    assert out.item() == (2.5 + 3.5 + 6.5 + 7.5) / 4
    out.backward()
    expected = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float64) / 16
    assert torch.equal(x.grad[0, 0, :3, :3], expected) and x.grad.sum() == 1.0


def test_adaptive_grids_differ_per_roi_and_pooling_together_equals_pooling_alone():
    x = torch.randn(2, 3, 20, 16, dtype=torch.float64)
    rois = torch.tensor(
        [[0.0, 0, 0, 15, 19], [1, 2, 3, 4, 5], [0, 1, 1, 3, 12], [1, -4, 5, 9, 30], [0, 5, 5, 5, 5]],
        dtype=torch.float64,
    )
    together = roi_align(x, rois, (3, 2), 1.0, 0)
    for k in range(len(rois)):
        assert torch.equal(together[k : k + 1], roi_align(x, rois[k : k + 1], (3, 2), 1.0, 0))
    assert torch.allclose(together, torchvision_roi_align(x, rois, (3, 2), 1.0, 0), rtol=0, atol=1e-12)


def test_boxes_as_a_list_equal_boxes_with_batch_indices():
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    boxes = [
        torch.tensor([[0.0, 0, 4, 4], [1, 1, 3, 5]], dtype=torch.float64),
        torch.zeros(0, 4, dtype=torch.float64),
    ]
    rois = torch.tensor([[0.0, 0, 0, 4, 4], [0, 1, 1, 3, 5]], dtype=torch.float64)
    assert torch.equal(roi_align(x, boxes, 2, 1.0, 2), roi_align(x, rois, 2, 1.0, 2))


def test_no_boxes_gives_an_empty_result_and_a_zero_gradient():
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    out = roi_align(x, [torch.zeros(0, 4), torch.zeros(0, 4)], (2, 3), 0.5, -1)
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_a_batch_index_outside_the_batch_is_an_error():
    with pytest.raises(ValueError, match=r"batch indices must be in \[0, 2\), got \[0.0, 2.0\]"):
        roi_align(torch.zeros(2, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2], [2, 0, 0, 2, 2]]), 1)


def test_runs_here_only_on_cpu_float32_and_float64_with_boxes_of_the_same_dtype():
    cpu = torch.zeros(1, 1, 2, 2)
    assert runs_here([cpu], torch.float32)
    assert runs_here([cpu.double()], torch.float64)
    assert not runs_here([cpu], torch.float64)
    assert not runs_here([cpu.half()], torch.float16)
    assert not runs_here([torch.zeros(1, 1, 2, 2, device="meta")], torch.float32)


def test_other_dtypes_go_to_torchvision():
    x = torch.randn(1, 2, 5, 5).half()
    rois = torch.tensor([[0.0, 0.5, 0.5, 3.0, 4.0]]).half()
    assert torch.equal(roi_align(x, rois, 2, 1.0, 2), torchvision_roi_align(x, rois, 2, 1.0, 2))


def test_channels_last_input_gives_the_same_values():
    x = torch.randn(2, 4, 7, 6)
    rois = torch.tensor([[1.0, 0.5, 0.5, 5.0, 6.0], [0, 2, 1, 3, 3]])
    expected = roi_align(x, rois, 3, 1.0, 2)
    assert torch.equal(roi_align(x.contiguous(memory_format=torch.channels_last), rois, 3, 1.0, 2), expected)


def test_pool_levels_takes_each_roi_from_its_own_level():
    fine, coarse = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)
    rois = torch.tensor([[0.0, 1, 1, 9, 13], [1, 0, 2, 15, 15], [1, 3, 3, 5, 4]])
    levels = torch.tensor([1, 0, 1])
    out = pool_levels([fine, coarse], rois, levels, [0.5, 0.25], 2, 2, False)
    for k, (level, scale) in enumerate([(coarse, 0.25), (fine, 0.5), (coarse, 0.25)]):
        assert torch.allclose(
            out[k], torchvision_roi_align(level, rois[k : k + 1], 2, scale, 2)[0], atol=1e-6
        )


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, -1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samples_on_the_borders_match_torchvision(aligned, sampling_ratio, dtype):
    """Boxes on a quarter-pixel lattice put samples exactly at -1, 0, H - 1 and H, where
    torchvision's rules switch (sample dropped, clamped, last row alone). float64 agrees to rounding;
    in float32 the gradient of each of the 30 pixels sums up to 52k boxes (values up to ~100), and
    both kernels are ~3e-4 off float64's there (summing in different orders), so float32 gradients
    are compared relative to the largest."""
    x = torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(0), dtype=dtype)
    starts = torch.arange(-2.5, 7.0, 0.25, dtype=dtype)
    sizes = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0, 7.5], dtype=dtype)
    y1, x1, h, w = torch.meshgrid(starts, starts, sizes, sizes, indexing="ij")
    rois = torch.stack([torch.zeros_like(x1), x1, y1, x1 + w, y1 + h], dim=-1).reshape(-1, 5)
    ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = roi_align(ours_x, rois, 2, 1.0, sampling_ratio, aligned)
    theirs = torchvision_roi_align(theirs_x, rois, 2, 1.0, sampling_ratio, aligned)
    grad_out = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ours.backward(grad_out)
    theirs.backward(grad_out)
    if dtype == torch.float64:
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)
        assert torch.allclose(ours_x.grad, theirs_x.grad, rtol=0, atol=1e-10)
    else:
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-5)
        scale = theirs_x.grad.abs().max()
        assert torch.allclose(ours_x.grad, theirs_x.grad, rtol=0, atol=2e-5 * scale)


@st.composite
def cases(draw: st.DrawFn) -> dict:
    """A random map, boxes (partly outside, degenerate, tiny, some images without any), options, and
    how many RoIs the forward pools per chunk."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 0.125, 0.37, 1.7]))
    boxes = []
    for _ in range(n):
        count = draw(st.integers(0, 5))
        image = []
        for _ in range(count):
            x1 = draw(st.floats(-0.5 * w, 1.3 * w, allow_nan=False)) / scale
            y1 = draw(st.floats(-0.5 * h, 1.3 * h, allow_nan=False)) / scale
            size = st.one_of(st.just(0.0), st.floats(1e-3, 0.1), st.floats(0.1, 1.5 * max(h, w)))
            image.append([x1, y1, x1 + draw(size) / scale, y1 + draw(size) / scale])
        boxes.append(image)
    return {
        "shape": (n, c, h, w),
        "boxes": boxes,
        "output_size": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "spatial_scale": scale,
        "sampling_ratio": draw(st.integers(-1, 3)),
        "aligned": draw(st.booleans()),
        "as_list": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
        "rois_per_chunk": draw(st.sampled_from([1, 2, 3, None])),
    }


def check_against_torchvision(case: dict, dtype: torch.dtype, atol_values: float, atol_grads: float) -> None:
    generator = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["shape"], generator=generator, dtype=dtype)
    boxes = [torch.tensor(b, dtype=dtype).reshape(-1, 4) for b in case["boxes"]]
    if not case["as_list"]:
        boxes = torch.cat(
            [torch.cat([torch.full((len(b), 1), float(i), dtype=dtype), b], 1) for i, b in enumerate(boxes)]
        )
    args = (case["output_size"], case["spatial_scale"], case["sampling_ratio"], case["aligned"])
    ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    chunk = case["rois_per_chunk"]  # None: the default, one chunk here
    floats = roi_align_module.CHUNK_FLOATS if chunk is None else chunk * case["shape"][1] * math.prod(args[0])
    with patch.object(roi_align_module, "CHUNK_FLOATS", floats):
        ours = roi_align(ours_x, boxes, *args)
    theirs = torchvision_roi_align(theirs_x, boxes, *args)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, rtol=0, atol=atol_values), (ours - theirs).abs().max()
    grad_out = torch.randn(ours.shape, generator=generator, dtype=dtype)
    ours.backward(grad_out)
    theirs.backward(grad_out)
    assert torch.allclose(ours_x.grad, theirs_x.grad, rtol=0, atol=atol_grads), (
        (ours_x.grad - theirs_x.grad).abs().max()
    )


@SETTINGS
@given(cases())
def test_float64_matches_torchvision_tightly(case):
    check_against_torchvision(case, torch.float64, 1e-12, 1e-12)


@SETTINGS
@given(cases())
def test_float32_matches_torchvision(case):
    check_against_torchvision(case, torch.float32, 1e-5, 1e-4)
