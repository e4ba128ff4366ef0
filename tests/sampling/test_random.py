"""RandomSampler: exact counts, fractions and IoU thresholds on hand-made candidates."""

import torch

from hardmine.sampling import IGNORE, Candidates, IoUThresholds, NoSampler, RandomSampler, assign_labels


def _candidates(ious: list[float], labels: list[int], ignore: list[bool] | None = None) -> Candidates:
    n = len(ious)
    return Candidates(
        ious=[torch.tensor(ious)],
        gt_labels=[torch.tensor(labels)],
        boxes=[torch.zeros(n, 4)],
        ignore=[torch.tensor(ignore)] if ignore is not None else None,
    )


def test_assign_labels_uses_fg_and_bg_ranges():
    cands = _candidates([0.0, 0.05, 0.1, 0.3, 0.49, 0.5, 0.9], [0, 2, 2, 2, 3, 3, 1])
    (labels,) = assign_labels(cands, IoUThresholds(fg=0.5, bg_lo=0.1, bg_hi=0.5))
    assert labels.tolist() == [IGNORE, IGNORE, 0, 0, 0, 3, 1]
    (labels,) = assign_labels(cands, IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5))
    assert labels.tolist() == [0, 0, 0, 0, 0, 3, 1]


def test_ignore_regions_are_never_background_and_force_fg_wins():
    cands = _candidates([0.2, 0.2, 0.3], [1, 1, 2], ignore=[True, False, False])
    cands.force_fg = [torch.tensor([False, False, True])]
    (labels,) = assign_labels(cands, IoUThresholds(fg=0.7, bg_lo=0.0, bg_hi=0.3))
    assert labels.tolist() == [IGNORE, 0, 2]


def test_random_sampler_exact_counts():
    torch.manual_seed(0)
    ious = [0.8] * 10 + [0.2] * 100
    labels = [1] * 10 + [1] * 100
    sampler = RandomSampler(batch_size_per_image=16, fg_fraction=0.25)
    (res,) = sampler(_candidates(ious, labels))
    assert res.indices.numel() == 16
    assert res.num_fg == 4 and res.num_bg == 12
    assert set(res.indices[res.labels > 0].tolist()) <= set(range(10))
    assert set(res.indices[res.labels == 0].tolist()) <= set(range(10, 110))
    assert len(set(res.indices.tolist())) == 16


def test_random_sampler_fills_with_background_when_few_foreground():
    sampler = RandomSampler(batch_size_per_image=8, fg_fraction=0.5)
    (res,) = sampler(_candidates([0.9, 0.0, 0.2, 0.3, 0.4, 0.45, 0.15, 0.25, 0.35, 0.12], [1] * 10))
    assert res.num_fg == 1 and res.num_bg == 7


def test_random_sampler_fewer_candidates_than_b_and_empty_image():
    sampler = RandomSampler(batch_size_per_image=512, fg_fraction=0.25)
    results = sampler(
        Candidates(
            ious=[torch.tensor([0.6, 0.2]), torch.zeros(0)],
            gt_labels=[torch.tensor([2, 2]), torch.zeros(0, dtype=torch.long)],
            boxes=[torch.zeros(2, 4), torch.zeros(0, 4)],
        )
    )
    assert sorted(results[0].indices.tolist()) == [0, 1]
    assert results[0].labels[results[0].indices == 0].tolist() == [2]
    assert results[1].indices.numel() == 0


def test_image_without_objects_gives_only_background():
    sampler = RandomSampler(batch_size_per_image=4, fg_fraction=0.25, thresholds=IoUThresholds(0.5, 0.0, 0.5))
    (res,) = sampler(_candidates([0.0] * 10, [0] * 10))
    assert res.num_fg == 0 and res.num_bg == 4


def test_no_sampler_keeps_all_assigned():
    (res,) = NoSampler(thresholds=IoUThresholds(0.5, 0.0, 0.4))(_candidates([0.1, 0.45, 0.6], [1, 1, 1]))
    assert res.indices.tolist() == [0, 2]
    assert res.labels.tolist() == [0, 1]


def test_thresholds_validated():
    import pytest

    with pytest.raises(ValueError, match="bg_lo <= bg_hi <= fg"):
        IoUThresholds(fg=0.4, bg_lo=0.1, bg_hi=0.5)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        RandomSampler(batch_size_per_image=0)
