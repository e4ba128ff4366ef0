"""OHEMSampler: exact selections on hand-made candidates and losses, and a property test against a
plain-Python reference of the algorithm."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torchvision.ops import box_iou

from hardmine.sampling import (
    IGNORE,
    SAMPLERS,
    CandidateLosses,
    Candidates,
    IoUThresholds,
    OHEMSampler,
    assign_labels,
)


def _boxes(n: int) -> Tensor:
    """`n` disjoint 5x5 boxes in a row, so that NMS removes none of them."""
    x = torch.arange(n, dtype=torch.float32) * 10
    return torch.stack([x, torch.zeros(n), x + 5, torch.full((n,), 5.0)], dim=1)


class FakeScores:
    """A score_fn returning fixed losses and recording the labels it was called with."""

    def __init__(self, cls: list[list[float]], box: list[list[float]] | None = None):
        box = box if box is not None else [[0.0] * len(c) for c in cls]
        self.losses = [CandidateLosses(torch.tensor(c), torch.tensor(b)) for c, b in zip(cls, box)]
        self.calls: list[list[Tensor]] = []

    def __call__(self, assigned: list[Tensor]) -> list[CandidateLosses]:
        self.calls.append([a.clone() for a in assigned])
        return self.losses


def _image(ious: list[float], gt_labels: list[int], boxes: Tensor | None = None) -> Candidates:
    return Candidates(
        ious=[torch.tensor(ious)],
        gt_labels=[torch.tensor(gt_labels)],
        boxes=[_boxes(len(ious)) if boxes is None else boxes],
    )


def _batch(*images: Candidates) -> Candidates:
    return Candidates(
        ious=[im.ious[0] for im in images],
        gt_labels=[im.gt_labels[0] for im in images],
        boxes=[im.boxes[0] for im in images],
    )


def test_registered_and_paper_defaults():
    assert SAMPLERS["ohem"] is OHEMSampler
    s = OHEMSampler()
    assert s.needs_scores
    assert s.thresholds == IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5)
    assert (s.batch_size_per_image, s.per_image, s.nms_thresh) == (64, True, 0.7)
    assert (s.rank_by, s.fg_fraction, s.mode) == ("cls+box", None, "two_pass")


def test_score_fn_called_once_with_assigned_labels():
    cands = _image([0.9, 0.3, 0.05], [2, 2, 0])
    cands.ignore = [torch.tensor([False, True, False])]
    scores = FakeScores([[1.0, 2.0, 3.0]])
    OHEMSampler(batch_size_per_image=2)(cands, scores)
    assert len(scores.calls) == 1
    (assigned,) = scores.calls[0]
    assert assigned.tolist() == [2, IGNORE, 0]
    assert torch.equal(assigned, assign_labels(cands, OHEMSampler().thresholds)[0])


def test_needs_a_score_fn():
    with pytest.raises(ValueError, match="score_fn"):
        OHEMSampler()(_image([0.9], [1]))


def test_nms_keeps_the_higher_loss_of_two_duplicates_with_the_same_label():
    # Boxes 0 and 1 overlap with IoU 100/110 = 0.91 > 0.7; box 2 is elsewhere.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = FakeScores([[3.0, 5.0, 1.0]])
    cands = _image([0.8, 0.8, 0.2], [1, 1, 1], boxes)
    (res,) = OHEMSampler(batch_size_per_image=2, per_image=True)(cands, scores)
    assert res.indices.tolist() == [1, 2]
    (res,) = OHEMSampler(batch_size_per_image=2, per_image=True, nms_thresh=None)(cands, scores)
    assert res.indices.tolist() == [0, 1]
    # Above the overlap: nothing is a duplicate.
    (res,) = OHEMSampler(batch_size_per_image=2, per_image=True, nms_thresh=0.95)(cands, scores)
    assert res.indices.tolist() == [0, 1]


def test_nms_groups_by_assigned_label_and_background_is_a_group():
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    # Two foreground classes and two background candidates on the same box.
    cands = _image([0.8, 0.8, 0.2, 0.1], [1, 2, 1, 1], same)
    sampler = OHEMSampler(batch_size_per_image=4, per_image=True)
    (res,) = sampler(cands, FakeScores([[1.0, 2.0, 3.0, 4.0]]))
    assert res.indices.tolist() == [0, 1, 3]
    assert res.labels.tolist() == [1, 2, 0]
    assert sampler.last_stats["num_removed_by_nms"] == 1.0


def test_nms_ties_keep_the_lower_index():
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    (res,) = OHEMSampler(batch_size_per_image=3)(_image([0.9] * 3, [1] * 3, same), FakeScores([[2.0] * 3]))
    assert res.indices.tolist() == [0]


def test_nms_looks_past_the_hardest_candidates_when_they_are_all_duplicates():
    # The 9 hardest candidates are one box of class 1: NMS must reach past them for B = 2 and the quota.
    boxes = torch.cat([torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(9, 4), _boxes(4) + 100])
    cands = _image([0.9] * 9 + [0.9, 0.1, 0.2, 0.3], [1] * 13, boxes)
    scores = FakeScores([[9.0 - 0.1 * i for i in range(9)] + [0.5, 0.4, 0.3, 0.2]])
    sampler = OHEMSampler(batch_size_per_image=2)
    (res,) = sampler(cands, scores)
    assert res.indices.tolist() == [0, 9]
    assert sampler.last_stats["num_removed_by_nms"] == 8.0
    assert sampler.last_stats["num_nms_examined"] == 13.0
    (res,) = OHEMSampler(batch_size_per_image=2, fg_fraction=0.5)(cands, scores)
    assert res.indices.tolist() == [0, 10]


def test_rank_by_cls_ignores_box_loss():
    # Candidate 0: foreground, low cls loss but high box loss. 1 and 2: background.
    cands = _image([0.7, 0.2, 0.3], [1, 1, 1])
    scores = FakeScores([[0.2, 1.0, 0.5]], [[2.0, 0.0, 0.0]])
    (res,) = OHEMSampler(batch_size_per_image=1, rank_by="cls+box")(cands, scores)
    assert res.indices.tolist() == [0]
    (res,) = OHEMSampler(batch_size_per_image=1, rank_by="cls")(cands, scores)
    assert res.indices.tolist() == [1]


def test_bg_lo_zero_makes_low_iou_candidates_background():
    cands = _image([0.05, 0.6, 0.3], [1, 1, 1])
    scores = FakeScores([[9.0, 1.0, 2.0]])
    (res,) = OHEMSampler(batch_size_per_image=2)(cands, scores)
    assert res.indices.tolist() == [0, 2]
    assert res.labels.tolist() == [0, 0]
    sampler = OHEMSampler(batch_size_per_image=2, thresholds=IoUThresholds(0.5, 0.1, 0.5))
    (res,) = sampler(cands, scores)
    assert res.indices.tolist() == [1, 2]
    assert res.labels.tolist() == [1, 0]


def test_ignored_candidates_are_never_selected():
    # 0: inside an ignore region; 1: IoU between bg_hi and fg. Both have the highest losses.
    cands = _image([0.2, 0.4, 0.9, 0.1], [1, 1, 1, 1])
    cands.ignore = [torch.tensor([True, False, False, False])]
    sampler = OHEMSampler(batch_size_per_image=4, thresholds=IoUThresholds(0.5, 0.0, 0.3))
    (res,) = sampler(cands, FakeScores([[9.0, 8.0, 1.0, 0.5]]))
    assert res.indices.tolist() == [2, 3]
    assert sampler.last_stats["num_candidates"] == 2.0


def test_per_batch_lets_one_image_take_all_slots_and_the_default_takes_b_of_each_image():
    cands = _batch(_image([0.9, 0.2, 0.8, 0.1], [1] * 4), _image([0.9, 0.2, 0.3, 0.1], [2] * 4))
    scores = FakeScores([[9.0, 8.0, 7.0, 6.0], [1.0, 2.0, 3.0, 4.0]])
    batch = OHEMSampler(batch_size_per_image=2, per_image=False)(cands, scores)
    assert [r.indices.tolist() for r in batch] == [[0, 1, 2, 3], []]
    assert batch[1].indices.dtype == torch.long and batch[1].labels.shape == (0,)
    # the paper's B/N of each image is the default: the easy second image still gets its 2 hardest
    default = OHEMSampler(batch_size_per_image=2)(cands, scores)
    assert [r.indices.tolist() for r in default] == [[0, 1], [2, 3]]


def test_loss_ties_go_to_the_lower_image_then_the_lower_index():
    cands = _batch(_image([0.2] * 3, [1] * 3), _image([0.2] * 3, [1] * 3))
    scores = FakeScores([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    batch = OHEMSampler(batch_size_per_image=2, per_image=False)(cands, scores)
    assert [r.indices.tolist() for r in batch] == [[0, 1, 2], [0]]
    per_image = OHEMSampler(batch_size_per_image=2, per_image=True)(cands, scores)
    assert [r.indices.tolist() for r in per_image] == [[0, 1], [0, 1]]


def test_fg_quota_per_image_and_per_batch():
    # Foreground 0..2 are the hardest; with B = 4 and fg_fraction = 0.25 only the hardest one stays.
    cands = _image([0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.4, 0.0], [1] * 8)
    scores = FakeScores([[10.0, 9.0, 8.0, 1.0, 2.0, 3.0, 0.5, 0.1]])
    (res,) = OHEMSampler(batch_size_per_image=4, fg_fraction=0.25)(cands, scores)
    assert res.indices.tolist() == [0, 3, 4, 5]
    (res,) = OHEMSampler(batch_size_per_image=4, fg_fraction=0.0)(cands, scores)
    assert res.indices.tolist() == [3, 4, 5, 6]
    (res,) = OHEMSampler(batch_size_per_image=4)(cands, scores)
    assert res.indices.tolist() == [0, 1, 2, 5]
    # Too little background: the quota still caps foreground and fewer than B come back.
    few_bg = _image([0.9, 0.8, 0.1], [1] * 3)
    (res,) = OHEMSampler(batch_size_per_image=4, fg_fraction=0.25)(few_bg, FakeScores([[3.0, 2.0, 1.0]]))
    assert res.indices.tolist() == [0, 2]
    # Per batch the quota is int(B * num_images * fg_fraction) = int(3 * 2 * 0.5) = 3 over both images,
    # where per image it is int(1.5) = 1 each.
    two = _batch(_image([0.9, 0.9, 0.9, 0.1], [1] * 4), _image([0.9, 0.1, 0.1, 0.1], [1] * 4))
    two_scores = FakeScores([[9.0, 8.0, 7.0, 1.0], [6.0, 0.3, 0.2, 0.1]])
    batch = OHEMSampler(batch_size_per_image=3, fg_fraction=0.5, per_image=False)(two, two_scores)
    assert [r.indices.tolist() for r in batch] == [[0, 1, 2, 3], [1, 2]]
    per_image = OHEMSampler(batch_size_per_image=3, fg_fraction=0.5, per_image=True)(two, two_scores)
    assert [r.indices.tolist() for r in per_image] == [[0, 3], [0, 1, 2]]


def test_image_without_objects_selects_background_by_loss():
    cands = _batch(_image([0.0] * 5, [0] * 5), _image([0.7, 0.1], [3, 3]))
    scores = FakeScores([[0.1, 0.9, 0.3, 0.7, 0.5], [0.2, 0.05]])
    res = OHEMSampler(batch_size_per_image=2, per_image=True)(cands, scores)
    assert res[0].indices.tolist() == [1, 3]
    assert res[0].labels.tolist() == [0, 0]
    assert res[1].labels.tolist() == [3, 0]


def test_fewer_candidates_than_b_and_empty_images():
    overlap = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    empty = Candidates(
        ious=[torch.zeros(0)], gt_labels=[torch.zeros(0, dtype=torch.long)], boxes=[torch.zeros(0, 4)]
    )
    cands = _batch(_image([0.6, 0.6, 0.2], [2, 2, 2], overlap), empty, _image([0.3], [1]))
    cands.ignore = [torch.zeros(3, dtype=torch.bool), torch.zeros(0, dtype=torch.bool), torch.tensor([True])]
    scores = FakeScores([[1.0, 2.0, 3.0], [], [5.0]])
    for per_image in (False, True):
        sampler = OHEMSampler(batch_size_per_image=64, per_image=per_image)
        res = sampler(cands, scores)
        assert res[0].indices.tolist() == [1, 2]
        for r in res[1:]:
            assert r.indices.shape == (0,) and r.labels.shape == (0,)
            assert r.indices.dtype == torch.long and r.labels.dtype == torch.long


def test_selection_carries_no_gradient():
    cls = torch.tensor([0.5, 2.0, 1.0], requires_grad=True)
    box = torch.tensor([0.3, 0.0, 0.0], requires_grad=True)
    sampler = OHEMSampler(batch_size_per_image=2)
    (res,) = sampler(_image([0.9, 0.2, 0.1], [1, 1, 1]), lambda assigned: [CandidateLosses(cls, box)])
    assert res.indices.tolist() == [1, 2]
    assert res.indices.dtype == torch.long and res.labels.dtype == torch.long
    assert not res.indices.requires_grad and not res.labels.requires_grad
    assert res.weights is None


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"batch_size_per_image": 0}, "batch_size_per_image"),
        ({"nms_thresh": 0.0}, "nms_thresh"),
        ({"nms_thresh": 1.5}, "nms_thresh"),
        ({"rank_by": "box"}, "rank_by"),
        ({"fg_fraction": -0.1}, "fg_fraction"),
        ({"fg_fraction": 1.1}, "fg_fraction"),
        ({"mode": "one_pass"}, "mode"),
    ],
)
def test_options_validated(kwargs: dict, option: str):
    with pytest.raises(ValueError, match=option):
        OHEMSampler(**kwargs)


def test_option_errors_list_the_allowed_values():
    with pytest.raises(ValueError, match="'two_pass', 'loss_mask'"):
        OHEMSampler(mode="naive")
    with pytest.raises(ValueError, match=r"'cls', 'cls\+box'"):
        OHEMSampler(rank_by="box")
    OHEMSampler(nms_thresh=1.0, fg_fraction=0.0, rank_by="cls", mode="loss_mask")


def test_score_fn_must_match_the_candidates():
    sampler = OHEMSampler()
    with pytest.raises(ValueError, match="one loss per candidate"):
        sampler(_image([0.9, 0.1], [1, 1]), FakeScores([[1.0]]))


def test_last_stats():
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 0, 30, 10], [40.0, 0, 50, 10]]
    )
    # 0 and 1: duplicates of class 1 (1 removed by NMS); 2: background; 3: ignored.
    cands = _batch(_image([0.9, 0.8, 0.2, 0.2], [1] * 4, boxes), _image([0.1, 0.6], [2, 2]))
    cands.ignore = [torch.tensor([False, False, False, True]), torch.tensor([False, False])]
    scores = FakeScores([[4.0, 1.0, 2.0, 100.0], [0.5, 1.0]], [[2.0, 1.0, 0.0, 0.0], [0.0, 0.5]])
    sampler = OHEMSampler(batch_size_per_image=1, per_image=False)
    res = sampler(cands, scores)
    # Survivors by cls + box: (0, 6.0), (1:1, 1.5), (2, 2.0), (1:0, 0.5); the top 2 of the batch stay.
    assert [r.indices.tolist() for r in res] == [[0, 2], []]
    assert sampler.last_stats == pytest.approx(
        {
            "num_candidates": 5.0,
            "num_removed_by_nms": 1.0,
            "num_nms_examined": 5.0,
            "num_selected": 2.0,
            "num_fg": 1.0,
            "num_bg": 1.0,
            "mean_loss_all": (6.0 + 2.0 + 2.0 + 0.5 + 1.5) / 5,
            "mean_loss_selected": 4.0,
        }
    )
    sampler(_image([0.3], [1]), FakeScores([[1.0]]))
    assert sampler.last_stats["num_candidates"] == 1.0
    cands = _image([0.3], [1])
    cands.ignore = [torch.tensor([True])]
    sampler(cands, FakeScores([[1.0]]))
    assert sampler.last_stats["mean_loss_all"] == 0.0 and sampler.last_stats["mean_loss_selected"] == 0.0
    assert sampler.last_stats["num_selected"] == 0.0


@st.composite
def _random_batch(draw: st.DrawFn) -> tuple[Candidates, list[list[float]], list[list[float]]]:
    """1-3 images of 0-20 candidates on a coarse grid (duplicates likely), coarse losses (ties likely)."""
    ious, gt_labels, boxes, ignore, cls, box = [], [], [], [], [], []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 20))
        ious.append(
            torch.tensor(
                draw(st.lists(st.sampled_from([0.0, 0.05, 0.3, 0.45, 0.5, 0.9]), min_size=n, max_size=n))
            )
        )
        gt_labels.append(
            torch.tensor(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=torch.long)
        )
        span = draw(st.integers(0, 3))  # 0: all boxes identical
        corners = torch.tensor(
            draw(st.lists(st.integers(0, span), min_size=2 * n, max_size=2 * n)), dtype=torch.float32
        )
        xy = corners.view(n, 2) * 4
        boxes.append(torch.cat([xy, xy + 8], dim=1))
        ignore.append(torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool))
        cls.append(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), min_size=n, max_size=n)))
        box.append(draw(st.lists(st.sampled_from([0.0, 0.25, 1.0]), min_size=n, max_size=n)))
    return Candidates(ious, gt_labels, boxes, ignore=ignore), cls, box


@settings(max_examples=150, deadline=None)
@given(
    batch=_random_batch(),
    b=st.integers(1, 6),
    per_image=st.booleans(),
    nms_thresh=st.sampled_from([None, 0.3, 0.7]),
    fg_fraction=st.sampled_from([None, 0.0, 0.25, 0.5, 1.0]),
    rank_by=st.sampled_from(["cls", "cls+box"]),
)
def test_selection_properties(batch, b, per_image, nms_thresh, fg_fraction, rank_by):
    cands, cls, box = batch
    sampler = OHEMSampler(
        batch_size_per_image=b,
        per_image=per_image,
        nms_thresh=nms_thresh,
        fg_fraction=fg_fraction,
        rank_by=rank_by,
    )
    assigned = assign_labels(cands, sampler.thresholds)
    scores = FakeScores(cls, box)
    results = sampler(cands, scores)
    assert len(scores.calls) == 1 and len(results) == len(cands)
    for r, labels in zip(results, assigned):
        idx = r.indices.tolist()
        assert r.indices.dtype == torch.long and idx == sorted(set(idx))
        assert all(labels[i] >= 0 for i in idx)
        assert torch.equal(r.labels, labels[r.indices])
        if per_image:
            assert len(idx) <= b
            if fg_fraction is not None:
                assert r.num_fg <= int(b * fg_fraction)
    batch_budget = b * len(cands)
    assert sum(r.indices.numel() for r in results) <= batch_budget
    if fg_fraction is not None and not per_image:
        assert sum(r.num_fg for r in results) <= int(batch_budget * fg_fraction)
    assert [r.indices.tolist() for r in results] == _reference(sampler, cands, cls, box)


def _reference(sampler: OHEMSampler, cands: Candidates, cls: list[list[float]], box: list[list[float]]):
    """The selection spelled out in plain Python: full greedy NMS, then the top B (within the quota)."""
    labels = [lab.tolist() for lab in assign_labels(cands, sampler.thresholds)]
    pools = []
    for image, (lab, c, bx, boxes) in enumerate(zip(labels, cls, box, cands.boxes)):
        loss = [ci + (bi if sampler.rank_by == "cls+box" else 0.0) for ci, bi in zip(c, bx)]
        order = sorted((j for j in range(len(lab)) if lab[j] >= 0), key=lambda j: -loss[j])
        iou = box_iou(boxes, boxes)
        kept: list[int] = []
        for j in order:
            if sampler.nms_thresh is None or all(
                lab[k] != lab[j] or iou[j, k] <= sampler.nms_thresh for k in kept
            ):
                kept.append(j)
        pools.append([(loss[j], image, j, lab[j] > 0) for j in kept])
    if sampler.per_image:
        groups, budget = pools, sampler.batch_size_per_image
    else:
        groups = [sorted(sum(pools, []), key=lambda t: -t[0])]
        budget = sampler.batch_size_per_image * len(labels)
    picks: list[list[int]] = [[] for _ in labels]
    for group in groups:
        if sampler.fg_fraction is None:
            chosen = group[:budget]
        else:
            fg = [t for t in group if t[3]][: int(budget * sampler.fg_fraction)]
            chosen = fg + [t for t in group if not t[3]][: budget - len(fg)]
        for _, image, j, _ in chosen:
            picks[image].append(j)
    return [sorted(p) for p in picks]
