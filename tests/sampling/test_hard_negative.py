"""HardNegativeSampler: exact selections on hand-made candidates and losses (SSD's 3:1 hard
negatives, the per-image minimum, ties and the edge cases)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from hardmine.sampling import (
    IGNORE,
    SAMPLERS,
    CandidateLosses,
    Candidates,
    HardNegativeSampler,
    IoUThresholds,
)


class FakeScores:
    """A score_fn returning fixed classification losses (box loss 1 everywhere, never used to rank)
    and recording the labels it was called with."""

    def __init__(self, *cls: list[float]):
        self.losses = [CandidateLosses(torch.tensor(c), torch.ones(len(c))) for c in cls]
        self.calls: list[list[Tensor]] = []

    def __call__(self, assigned: list[Tensor]) -> list[CandidateLosses]:
        self.calls.append([a.clone() for a in assigned])
        return self.losses


def _batch(*images: tuple[list[float], list[int]]) -> Candidates:
    """One image per (IoUs, gt labels) pair."""
    return Candidates(
        ious=[torch.tensor(ious) for ious, _ in images],
        gt_labels=[torch.tensor(labels) for _, labels in images],
        boxes=[torch.zeros(len(ious), 4) for ious, _ in images],
    )


def _image(ious: list[float], gt_labels: list[int] | None = None) -> Candidates:
    return _batch((ious, gt_labels if gt_labels is not None else [1] * len(ious)))


def test_registered_and_ssd_defaults():
    assert SAMPLERS["hard_negative"] is HardNegativeSampler
    s = HardNegativeSampler()
    assert s.needs_scores
    assert s.thresholds == IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5)
    assert (s.neg_pos_ratio, s.min_negatives_per_image) == (3.0, 16)


def test_needs_a_score_fn():
    with pytest.raises(ValueError, match="score_fn"):
        HardNegativeSampler()(_image([0.9, 0.1]))


def test_score_fn_must_match_the_candidates():
    with pytest.raises(ValueError, match="one loss per candidate"):
        HardNegativeSampler()(_image([0.9, 0.1]), FakeScores([1.0]))


def test_keeps_all_foreground_and_three_hardest_negatives_per_foreground():
    # Foreground 0 and 5 (low losses, kept anyway); background ranked by cls loss: 7, 2, 9, 4, 1, 8, ...
    ious = [0.9, 0.1, 0.2, 0.3, 0.0, 0.6, 0.4, 0.1, 0.2, 0.3, 0.0]
    cls = [0.01, 0.5, 0.9, 0.2, 0.6, 0.02, 0.1, 2.0, 0.4, 0.8, 0.3]
    scores = FakeScores(cls)
    (res,) = HardNegativeSampler(min_negatives_per_image=0)(_image(ious), scores)
    assert res.indices.tolist() == [0, 1, 2, 4, 5, 7, 8, 9]
    assert res.labels.tolist() == [1, 0, 0, 0, 1, 0, 0, 0]
    assert res.weights is None
    assert len(scores.calls) == 1


def test_ratio_is_truncated_and_applies_per_image():
    # 3 foreground at ratio 1.5: int(4.5) = 4 negatives; the second image has 1 foreground: 1 negative.
    first = ([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], [2] * 9)
    second = ([0.1, 0.8, 0.1, 0.1], [1] * 4)
    scores = FakeScores([0.0, 0.0, 0.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0], [9.0, 0.0, 1.0, 3.0])
    res = HardNegativeSampler(neg_pos_ratio=1.5, min_negatives_per_image=0)(_batch(first, second), scores)
    assert [r.indices.tolist() for r in res] == [[0, 1, 2, 3, 4, 5, 6], [0, 1]]


def test_image_without_foreground_keeps_the_minimum_of_hardest_negatives():
    scores = FakeScores([0.1, 0.9, 0.3, 0.7, 0.5, 0.2])
    (res,) = HardNegativeSampler(min_negatives_per_image=2)(_image([0.0] * 6, [0] * 6), scores)
    assert res.indices.tolist() == [1, 3]
    assert res.labels.tolist() == [0, 0]
    (res,) = HardNegativeSampler(min_negatives_per_image=0)(_image([0.0] * 6, [0] * 6), scores)
    assert res.indices.shape == (0,) and res.indices.dtype == torch.long and res.labels.dtype == torch.long


def test_minimum_applies_when_the_ratio_asks_for_fewer():
    # 1 foreground at 3:1 wants 3 negatives; the minimum of 4 wins.
    scores = FakeScores([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    (res,) = HardNegativeSampler(min_negatives_per_image=4)(_image([0.7] + [0.1] * 6), scores)
    assert res.indices.tolist() == [0, 3, 4, 5, 6]


def test_loss_ties_go_to_the_lower_index():
    scores = FakeScores([0.0, 1.0, 2.0, 1.0, 1.0, 1.0])
    (res,) = HardNegativeSampler(neg_pos_ratio=3.0, min_negatives_per_image=0)(
        _image([0.8, 0.1, 0.1, 0.1, 0.1, 0.1]), scores
    )
    assert res.indices.tolist() == [0, 1, 2, 3]


def test_fewer_negatives_than_wanted_keeps_them_all():
    scores = FakeScores([0.1, 0.2, 0.3, 0.4])
    (res,) = HardNegativeSampler()(_image([0.9, 0.8, 0.7, 0.2]), scores)
    assert res.indices.tolist() == [0, 1, 2, 3]
    empty = Candidates(
        ious=[torch.zeros(0)], gt_labels=[torch.zeros(0, dtype=torch.long)], boxes=[torch.zeros(0, 4)]
    )
    (res,) = HardNegativeSampler()(empty, FakeScores([]))
    assert res.indices.shape == (0,) and res.indices.dtype == torch.long


def test_ignored_candidates_are_never_selected():
    # 0: inside an ignore region; 1: IoU between bg_hi and fg; both have the highest losses.
    cands = _image([0.2, 0.45, 0.9, 0.1, 0.0])
    cands.ignore = [torch.tensor([True, False, False, False, False])]
    sampler = HardNegativeSampler(thresholds=IoUThresholds(0.5, 0.0, 0.4), min_negatives_per_image=0)
    scores = FakeScores([9.0, 8.0, 0.1, 0.5, 0.2])
    (res,) = sampler(cands, scores)
    assert scores.calls[0][0].tolist() == [IGNORE, IGNORE, 1, 0, 0]
    assert res.indices.tolist() == [2, 3, 4]


def test_ranks_by_classification_loss_only():
    cands = _image([0.9, 0.1, 0.2])
    scores = FakeScores([0.1, 1.0, 2.0])
    scores.losses[0].box = torch.tensor([0.0, 5.0, 0.0])
    (res,) = HardNegativeSampler(neg_pos_ratio=1.0, min_negatives_per_image=0)(cands, scores)
    assert res.indices.tolist() == [0, 2]


def test_last_stats():
    first = ([0.9, 0.1, 0.2, 0.3, 0.45], [1] * 5)
    second = ([0.0, 0.0], [0, 0])
    cands = _batch(first, second)
    cands.ignore = [torch.tensor([False, False, False, False, True]), torch.tensor([False, False])]
    scores = FakeScores([1.0, 2.0, 4.0, 3.0, 100.0], [0.5, 1.5])
    sampler = HardNegativeSampler(neg_pos_ratio=1.0, min_negatives_per_image=1)
    res = sampler(cands, scores)
    assert [r.indices.tolist() for r in res] == [[0, 2], [1]]
    assert sampler.last_stats == pytest.approx(
        {
            "num_candidates": 6.0,
            "num_selected": 3.0,
            "num_fg": 1.0,
            "num_bg": 2.0,
            "mean_loss_all": (1.0 + 2.0 + 4.0 + 3.0 + 0.5 + 1.5) / 6,
            "mean_loss_selected": (1.0 + 4.0 + 1.5) / 3,
        }
    )
    only_ignored = _image([0.2])
    only_ignored.ignore = [torch.tensor([True])]
    sampler(only_ignored, FakeScores([1.0]))
    assert sampler.last_stats["num_candidates"] == 0.0
    assert sampler.last_stats["num_selected"] == 0.0
    assert sampler.last_stats["mean_loss_all"] == 0.0 and sampler.last_stats["mean_loss_selected"] == 0.0


def test_selection_carries_no_gradient():
    cls = torch.tensor([0.5, 2.0, 1.0], requires_grad=True)
    box = torch.zeros(3, requires_grad=True)
    sampler = HardNegativeSampler(min_negatives_per_image=0)
    (res,) = sampler(_image([0.9, 0.2, 0.1]), lambda assigned: [CandidateLosses(cls, box)])
    assert res.indices.tolist() == [0, 1, 2]
    assert not res.indices.requires_grad and not res.labels.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"neg_pos_ratio": -1.0}, "neg_pos_ratio"),
        ({"min_negatives_per_image": -1}, "min_negatives_per_image"),
    ],
)
def test_options_validated(kwargs: dict, option: str):
    with pytest.raises(ValueError, match=option):
        HardNegativeSampler(**kwargs)
