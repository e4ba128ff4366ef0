"""IoUBalancedSampler: exact per-bin counts on hand-made IoU layouts, the floor, the remainder fill,
the foreground quota and the edge cases."""

from __future__ import annotations

import pytest
import torch

from hardmine.sampling import SAMPLERS, Candidates, IoUBalancedSampler, IoUThresholds

#: Libra R-CNN's assignment: foreground at IoU >= 0.5, background in [0, 0.5).
LIBRA = IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5)


def _image(
    ious: list[float], gt_labels: list[int] | None = None, ignore: list[bool] | None = None
) -> Candidates:
    n = len(ious)
    return Candidates(
        ious=[torch.tensor(ious)],
        gt_labels=[torch.tensor(gt_labels if gt_labels is not None else [1] * n)],
        boxes=[torch.zeros(n, 4)],
        ignore=[torch.tensor(ignore)] if ignore is not None else None,
    )


def _ranges(*groups: tuple[float, int]) -> tuple[list[float], list[range]]:
    """IoUs of consecutive groups of (IoU, count) candidates, and each group's index range."""
    ious, ranges = [], []
    for iou, count in groups:
        ranges.append(range(len(ious), len(ious) + count))
        ious += [iou] * count
    return ious, ranges


def _count_in(indices: torch.Tensor, group: range) -> int:
    return sum(i in group for i in indices.tolist())


def test_registered_and_libra_defaults():
    assert SAMPLERS["iou_balanced"] is IoUBalancedSampler
    s = IoUBalancedSampler()
    assert not s.needs_scores
    assert s.thresholds == LIBRA
    assert (s.batch_size_per_image, s.fg_fraction, s.num_bins) == (512, 0.25, 3)
    assert (s.floor_iou, s.floor_fraction) == (None, 0.0)


def test_equal_share_per_bin():
    # Background from 0.0 to 0.45: bins [0, 0.15), [0.15, 0.3), [0.3, 0.45]; the highest IoU is in the last.
    ious, (b0, b1, b2, top, fg) = _ranges((0.05, 30), (0.2, 10), (0.35, 6), (0.45, 1), (0.8, 10))
    ious[b0[0]] = 0.0
    torch.manual_seed(0)
    sampler = IoUBalancedSampler(batch_size_per_image=16, fg_fraction=0.25, thresholds=LIBRA)
    (res,) = sampler(_image(ious))
    assert res.num_fg == 4 and _count_in(res.indices, fg) == 4
    assert [_count_in(res.indices, b) for b in (b0, b1)] == [4, 4]
    assert _count_in(res.indices, b2) + _count_in(res.indices, top) == 4
    assert len(set(res.indices.tolist())) == 16
    assert sampler.last_stats == {
        "num_fg": 4.0,
        "num_bg": 12.0,
        "num_bg_bin0": 4.0,
        "num_bg_bin1": 4.0,
        "num_bg_bin2": 4.0,
    }


def test_short_bin_gives_all_it_has_and_the_rest_is_filled_at_random():
    # Bin 2 holds 2 and bin 1 exactly its share (4): the 2 missing come from bin 0.
    ious, (b0, b1, b2) = _ranges((0.05, 30), (0.2, 4), (0.4, 2))
    ious[b0[0]] = 0.0
    sampler = IoUBalancedSampler(batch_size_per_image=12, fg_fraction=0.25, thresholds=LIBRA)
    (res,) = sampler(_image(ious))
    assert [_count_in(res.indices, b) for b in (b0, b1, b2)] == [6, 4, 2]
    assert set(b1) | set(b2) <= set(res.indices.tolist())
    assert sampler.last_stats == {
        "num_fg": 0.0,
        "num_bg": 12.0,
        "num_bg_bin0": 6.0,
        "num_bg_bin1": 4.0,
        "num_bg_bin2": 2.0,
    }


def test_rounding_remainder_of_the_bin_shares_is_filled_at_random():
    ious, (b0, b1, b2) = _ranges((0.0, 20), (0.2, 20), (0.45, 20))
    (res,) = IoUBalancedSampler(batch_size_per_image=13, thresholds=LIBRA)(_image(ious))
    counts = sorted(_count_in(res.indices, b) for b in (b0, b1, b2))
    assert counts == [4, 4, 5]


def test_floor_takes_its_fraction_and_bins_start_at_the_floor():
    # Below the floor 0.1: 20. Bins from 0.1 to 0.4: [0.1, 0.2), [0.2, 0.3), [0.3, 0.4].
    ious, (floor, b0, b1, b2) = _ranges((0.02, 20), (0.12, 5), (0.25, 5), (0.38, 5))
    ious[b2[-1]] = 0.4
    sampler = IoUBalancedSampler(
        batch_size_per_image=8, fg_fraction=0.0, floor_iou=0.1, floor_fraction=0.25, thresholds=LIBRA
    )
    (res,) = sampler(_image(ious))
    # Floor: int(8 * 0.25) = 2; each bin (8 - 2) // 3 = 2.
    assert [_count_in(res.indices, g) for g in (floor, b0, b1, b2)] == [2, 2, 2, 2]
    assert sampler.last_stats == {
        "num_fg": 0.0,
        "num_bg": 8.0,
        "num_bg_bin0": 2.0,
        "num_bg_bin1": 2.0,
        "num_bg_bin2": 2.0,
        "num_bg_floor": 2.0,
    }
    # Without a floor the bins span 0.02..0.4, so the low IoUs share bin 0 with the 0.12 ones.
    sampler = IoUBalancedSampler(batch_size_per_image=9, fg_fraction=0.0, thresholds=LIBRA)
    (res,) = sampler(_image(ious))
    assert _count_in(res.indices, floor) + _count_in(res.indices, b0) == 3
    assert [_count_in(res.indices, g) for g in (b1, b2)] == [3, 3]
    assert "num_bg_floor" not in sampler.last_stats


def test_floor_fraction_zero_only_fills_what_the_bins_lack():
    ious, (floor, b0, b1, b2) = _ranges((0.02, 20), (0.12, 1), (0.25, 1), (0.4, 1))
    sampler = IoUBalancedSampler(batch_size_per_image=6, fg_fraction=0.0, floor_iou=0.1, thresholds=LIBRA)
    (res,) = sampler(_image(ious))
    assert [_count_in(res.indices, g) for g in (floor, b0, b1, b2)] == [3, 1, 1, 1]
    assert sampler.last_stats["num_bg_floor"] == 3.0


def test_everything_below_the_floor_is_drawn_at_random():
    sampler = IoUBalancedSampler(batch_size_per_image=4, floor_iou=0.3, floor_fraction=0.5, thresholds=LIBRA)
    (res,) = sampler(_image([0.1, 0.2, 0.05, 0.15, 0.25, 0.0]))
    assert res.num_bg == 4
    assert sampler.last_stats["num_bg_floor"] == 4.0
    assert [sampler.last_stats[f"num_bg_bin{k}"] for k in range(3)] == [0.0, 0.0, 0.0]


def test_foreground_quota_as_random_sampler():
    ious, (fg, bg) = _ranges((0.9, 10), (0.2, 20))
    (res,) = IoUBalancedSampler(batch_size_per_image=8, fg_fraction=0.5, thresholds=LIBRA)(_image(ious))
    assert _count_in(res.indices, fg) == 4 and _count_in(res.indices, bg) == 4
    assert res.labels.tolist() == [1] * 4 + [0] * 4
    # Too little foreground: its free slots go to background.
    ious, (fg, bg) = _ranges((0.9, 1), (0.2, 20))
    (res,) = IoUBalancedSampler(batch_size_per_image=8, fg_fraction=0.5, thresholds=LIBRA)(_image(ious))
    assert res.num_fg == 1 and res.num_bg == 7


def test_fewer_candidates_than_b_and_empty_images():
    cands = Candidates(
        ious=[torch.tensor([0.6, 0.2, 0.45, 0.0]), torch.zeros(0)],
        gt_labels=[torch.tensor([2, 2, 2, 2]), torch.zeros(0, dtype=torch.long)],
        boxes=[torch.zeros(4, 4), torch.zeros(0, 4)],
    )
    sampler = IoUBalancedSampler(batch_size_per_image=512, thresholds=LIBRA)
    res = sampler(cands)
    assert sorted(res[0].indices.tolist()) == [0, 1, 2, 3]
    assert res[0].labels[res[0].indices == 0].tolist() == [2]
    assert res[1].indices.shape == (0,) and res[1].indices.dtype == torch.long
    assert res[1].labels.shape == (0,) and res[1].labels.dtype == torch.long
    assert sampler.last_stats == {
        "num_fg": 1.0,
        "num_bg": 3.0,
        "num_bg_bin0": 1.0,
        "num_bg_bin1": 1.0,
        "num_bg_bin2": 1.0,
    }


def test_image_without_objects_gives_only_background():
    # Every IoU is 0: the bins have no width and bin 0 holds all the background.
    sampler = IoUBalancedSampler(batch_size_per_image=4, thresholds=LIBRA)
    (res,) = sampler(_image([0.0] * 10, [0] * 10))
    assert res.num_fg == 0 and res.num_bg == 4
    assert sampler.last_stats == {
        "num_fg": 0.0,
        "num_bg": 4.0,
        "num_bg_bin0": 4.0,
        "num_bg_bin1": 0.0,
        "num_bg_bin2": 0.0,
    }


def test_ignored_candidates_are_never_selected():
    # 0: inside an ignore region; 1: IoU between bg_hi and fg; 2: below bg_lo.
    cands = _image([0.2, 0.45, 0.05, 0.9, 0.3, 0.15], ignore=[True, False, False, False, False, False])
    sampler = IoUBalancedSampler(batch_size_per_image=512, thresholds=IoUThresholds(0.5, 0.1, 0.4))
    (res,) = sampler(cands)
    assert sorted(res.indices.tolist()) == [3, 4, 5]


def test_stats_sum_over_the_batch():
    cands = Candidates(
        ious=[torch.tensor([0.0, 0.2, 0.4, 0.9]), torch.tensor([0.1, 0.3])],
        gt_labels=[torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1])],
        boxes=[torch.zeros(4, 4), torch.zeros(2, 4)],
    )
    sampler = IoUBalancedSampler(batch_size_per_image=8, thresholds=LIBRA)
    sampler(cands)
    assert sampler.last_stats == {
        "num_fg": 1.0,
        "num_bg": 5.0,
        "num_bg_bin0": 2.0,
        "num_bg_bin1": 1.0,
        "num_bg_bin2": 2.0,
    }


def test_seeded_runs_select_the_same_candidates():
    ious = torch.rand(200, generator=torch.Generator().manual_seed(1)).tolist()
    sampler = IoUBalancedSampler(batch_size_per_image=32, thresholds=LIBRA)
    torch.manual_seed(7)
    (first,) = sampler(_image(ious))
    torch.manual_seed(7)
    (second,) = sampler(_image(ious))
    assert torch.equal(first.indices, second.indices)
    torch.manual_seed(8)
    (third,) = sampler(_image(ious))
    assert not torch.equal(first.indices, third.indices)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"batch_size_per_image": 0}, "batch_size_per_image"),
        ({"fg_fraction": 1.5}, "fg_fraction"),
        ({"num_bins": 0}, "num_bins"),
        ({"floor_iou": 0.0}, "floor_iou"),
        ({"floor_iou": 1.1}, "floor_iou"),
        ({"floor_fraction": -0.1}, "floor_fraction"),
        ({"floor_fraction": 1.1}, "floor_fraction"),
    ],
)
def test_options_validated(kwargs: dict, option: str):
    with pytest.raises(ValueError, match=option):
        IoUBalancedSampler(**kwargs)
