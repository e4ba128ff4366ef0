"""InstanceBalancedSampler: foreground shares per object computed by hand, random background."""

from collections import Counter

import pytest
import torch

from hardmine.options import OptionError
from hardmine.sampling import SAMPLERS, Candidates, IoUThresholds, RandomSampler
from hardmine.sampling.instance_balanced import InstanceBalancedSampler, water_fill

THRESHOLDS = IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5)


def candidates(objects: list[int], num_bg: int, num_ignored: int = 0) -> Candidates:
    """One image: `objects[k]` foreground candidates (IoU 0.8, class 1) of object k, then `num_bg`
    background ones (IoU 0.2) and `num_ignored` at IoU 0.2 inside an ignore region (never sampled)."""
    gt_index = [k for k, n in enumerate(objects) for _ in range(n)] + [0] * (num_bg + num_ignored)
    n = len(gt_index)
    ious = [0.8] * sum(objects) + [0.2] * num_bg + [0.2] * num_ignored
    ignore = [False] * (n - num_ignored) + [True] * num_ignored
    return Candidates(
        ious=[torch.tensor(ious)],
        gt_labels=[torch.ones(n, dtype=torch.long)],
        boxes=[torch.zeros(n, 4)],
        ignore=[torch.tensor(ignore)],
        gt_index=[torch.tensor(gt_index)],
    )


def per_object(result, objects: list[int]) -> list[int]:
    """How many of each object's candidates were selected."""
    owner = [k for k, n in enumerate(objects) for _ in range(n)]
    counts = Counter(owner[i] for i in result.indices.tolist() if i < len(owner))
    return [counts[k] for k in range(len(objects))]


def test_it_is_found_by_its_name():
    assert SAMPLERS["instance_balanced"] is InstanceBalancedSampler


def test_water_filling_by_hand():
    # budget 10 over 2, 20, 20 candidates: the small object keeps its 2, the others split 8 evenly
    assert water_fill([2, 20, 20], 10, [0, 1, 2]) == [2, 4, 4]
    # 10 over three equal objects: 3 + 3 + 4, the extra one to the object the tie order serves last
    assert water_fill([20, 20, 20], 10, [0, 1, 2]) == [3, 3, 4]
    assert water_fill([20, 20, 20], 10, [2, 0, 1]) == [4, 3, 3]
    assert water_fill([1, 10, 10], 20, [0, 1, 2]) == [1, 9, 10]
    assert water_fill([7], 5, [0]) == [5]


def test_the_foreground_is_split_evenly_over_the_objects():
    torch.manual_seed(0)
    objects = [2, 20, 20]
    sampler = InstanceBalancedSampler(THRESHOLDS, batch_size_per_image=40, fg_fraction=0.25)
    (result,) = sampler(candidates(objects, num_bg=100))
    assert per_object(result, objects) == [2, 4, 4]  # budget int(40 x 0.25) = 10
    assert result.num_fg == 10 and result.num_bg == 30
    assert result.labels.tolist() == [1] * 10 + [0] * 30
    assert len(set(result.indices.tolist())) == 40
    stats = sampler.last_stats
    assert stats == {"num_fg": 10.0, "num_bg": 30.0, "num_objects": 3.0, "max_fg_per_object": 4.0}


def test_a_dominant_object_no_longer_fills_the_budget():
    objects = [2, 98]
    balanced = InstanceBalancedSampler(THRESHOLDS, batch_size_per_image=80, fg_fraction=0.25)
    (result,) = balanced(candidates(objects, num_bg=200))
    assert per_object(result, objects) == [2, 18]
    # random sampling takes the small object's candidates in proportion: 2 of 100, so rarely both
    torch.manual_seed(0)
    drawn = [
        per_object(RandomSampler(THRESHOLDS, 80, 0.25)(candidates(objects, 200))[0], objects)[0]
        for _ in range(20)
    ]
    assert sum(drawn) < 20 and all(n <= 2 for n in drawn)


def test_the_extra_share_goes_to_objects_at_random():
    objects = [10, 10, 10]
    extra = Counter()
    for seed in range(30):
        torch.manual_seed(seed)
        (result,) = InstanceBalancedSampler(THRESHOLDS, 16, 0.25)(candidates(objects, num_bg=50))
        shares = per_object(result, objects)  # budget 4: 1 + 1 + 2
        assert sorted(shares) == [1, 1, 2]
        extra[shares.index(2)] += 1
    assert set(extra) == {0, 1, 2}


def test_few_foreground_candidates_are_all_kept_and_the_background_fills_b():
    objects = [1, 2]
    (result,) = InstanceBalancedSampler(THRESHOLDS, 40, 0.25)(candidates(objects, num_bg=100))
    assert per_object(result, objects) == [1, 2] and result.num_bg == 37


def test_ignored_candidates_are_never_selected():
    objects = [3]
    (result,) = InstanceBalancedSampler(THRESHOLDS, 64, 0.5)(candidates(objects, num_bg=5, num_ignored=4))
    assert sorted(result.indices.tolist()) == list(range(8))  # 3 fg + 5 bg; 8..11 are ignored


def test_it_needs_the_ground_truth_index_and_checks_its_options():
    plain = candidates([3], num_bg=2)
    plain.gt_index = None
    with pytest.raises(ValueError, match="gt_index"):
        InstanceBalancedSampler(THRESHOLDS)(plain)
    with pytest.raises(OptionError, match="batch_size_per_image must be > 0"):
        InstanceBalancedSampler(batch_size_per_image=0)
    with pytest.raises(OptionError, match=r"fg_fraction must be in \[0, 1\]"):
        InstanceBalancedSampler(fg_fraction=1.5)


def test_the_config_and_the_preset_build_it():
    from pathlib import Path

    from hardmine.config import load_config
    from hardmine.models.build import build_model

    cfg = load_config(None, ["roi_head.sampler=instance_balanced", "roi_head.sampler.fg_fraction=0.5"])
    assert cfg.roi_head.sampler == InstanceBalancedSampler(batch_size_per_image=512, fg_fraction=0.5)
    preset = Path(__file__).resolve().parents[2] / "configs" / "faster_rcnn_instance_balanced.yaml"
    roi = build_model(load_config(preset), num_classes=3).heads["roi"]
    assert roi.sampler == InstanceBalancedSampler(IoUThresholds(0.5, 0.1, 0.5), 512, 0.25)
