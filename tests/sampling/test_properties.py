"""Property-based tests (hypothesis) of every sampler over random candidates, labels, masks, losses
and options: never crash; the selection is a set of eligible candidates (never ignored ones) with
their assigned labels; counts stay within B and the foreground quota."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hardmine.sampling import (
    CandidateLosses,
    Candidates,
    HardNegativeSampler,
    IoUBalancedSampler,
    IoUThresholds,
    NoSampler,
    OHEMSampler,
    RandomSampler,
    Sampler,
    SampleResult,
    assign_labels,
)

SETTINGS = settings(max_examples=50, deadline=None)
NUM_CLASSES = 3


@st.composite
def thresholds(draw: st.DrawFn) -> IoUThresholds:
    lo, hi, fg = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3)))
    return IoUThresholds(fg=fg, bg_lo=lo, bg_hi=hi)


@st.composite
def image_candidates(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """One image's candidates: IoUs with ties (a coarse grid), labels, valid boxes, masks."""
    n = draw(st.integers(0, 40))
    ious = draw(st.lists(st.integers(0, 20).map(lambda k: k / 20), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, NUM_CLASSES), min_size=n, max_size=n))
    corners = draw(st.lists(st.tuples(*[st.integers(0, 30)] * 4), min_size=n, max_size=n))
    boxes = [(min(a, c), min(b, d), max(a, c) + 1, max(b, d) + 1) for a, b, c, d in corners]
    ignore = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    force_fg = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return {
        "ious": torch.tensor(ious, dtype=torch.float32),
        "gt_labels": torch.tensor(labels, dtype=torch.long),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "ignore": torch.tensor(ignore, dtype=torch.bool),
        "force_fg": torch.tensor(force_fg, dtype=torch.bool),
    }


@st.composite
def batches(draw: st.DrawFn) -> Candidates:
    images = draw(st.lists(image_candidates(), min_size=1, max_size=3))
    masks = draw(st.booleans())
    return Candidates(
        ious=[i["ious"] for i in images],
        gt_labels=[i["gt_labels"] for i in images],
        boxes=[i["boxes"] for i in images],
        ignore=[i["ignore"] for i in images] if masks else None,
        force_fg=[i["force_fg"] for i in images] if masks else None,
    )


#: Per-candidate losses: ordinary values with ties, and now and then a NaN or an infinity.
LOSS = st.one_of(st.integers(0, 8).map(lambda k: k / 4), st.sampled_from([math.nan, math.inf]))


@st.composite
def score_fns(draw: st.DrawFn, candidates: Candidates):
    sizes = [len(i) for i in candidates.ious]
    cls = [torch.tensor(draw(st.lists(LOSS, min_size=n, max_size=n)), dtype=torch.float32) for n in sizes]
    box = [torch.tensor(draw(st.lists(LOSS, min_size=n, max_size=n)), dtype=torch.float32) for n in sizes]

    def score(labels: list[torch.Tensor]) -> list[CandidateLosses]:
        return [
            CandidateLosses(c, torch.where(lab > 0, b, torch.zeros_like(b)))
            for c, b, lab in zip(cls, box, labels)
        ]

    return score


def check_common(sampler: Sampler, candidates: Candidates, results: list[SampleResult]) -> list[torch.Tensor]:
    """What every sampler guarantees; returns the assigned labels."""
    assigned = assign_labels(candidates, sampler.thresholds)
    assert len(results) == len(candidates)
    for res, labels in zip(results, assigned):
        idx = res.indices
        assert idx.dtype == torch.long and res.labels.dtype == torch.long
        assert idx.numel() == res.labels.numel() == len(set(idx.tolist()))  # no candidate twice
        assert bool(((idx >= 0) & (idx < labels.numel())).all())  # selected ⊆ candidates
        assert torch.equal(res.labels, labels[idx])  # the targets are the assigned labels
        assert bool((res.labels >= 0).all())  # never an ignored candidate
        if res.weights is not None:
            assert res.weights.shape == idx.shape and bool(torch.isfinite(res.weights).all())
    return assigned


@SETTINGS
@given(
    candidates=batches(),
    thresh=thresholds(),
    b=st.integers(1, 24),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_random_sampler(candidates, thresh, b, fraction, seed):
    torch.manual_seed(seed)
    sampler = RandomSampler(thresh, batch_size_per_image=b, fg_fraction=fraction)
    results = sampler(candidates)
    for res, labels in zip(results, check_common(sampler, candidates, results)):
        fg, bg = int((labels > 0).sum()), int((labels == 0).sum())
        num_fg = min(fg, int(b * fraction))
        assert res.num_fg == num_fg and res.num_bg == min(bg, b - num_fg) and res.indices.numel() <= b


@SETTINGS
@given(
    candidates=batches(),
    thresh=thresholds(),
    b=st.integers(1, 24),
    fraction=st.floats(0.0, 1.0),
    bins=st.integers(1, 4),
    floor=st.one_of(st.none(), st.floats(0.05, 1.0)),
    floor_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_iou_balanced_sampler(candidates, thresh, b, fraction, bins, floor, floor_fraction, seed):
    torch.manual_seed(seed)
    sampler = IoUBalancedSampler(
        thresh, b, fraction, num_bins=bins, floor_iou=floor, floor_fraction=floor_fraction
    )
    results = sampler(candidates)
    for res, labels in zip(results, check_common(sampler, candidates, results)):
        fg, bg = int((labels > 0).sum()), int((labels == 0).sum())
        num_fg = min(fg, int(b * fraction))
        assert res.num_fg == num_fg and res.num_bg == min(bg, b - num_fg) and res.indices.numel() <= b
    assert sampler.last_stats["num_bg"] == sum(r.num_bg for r in results)


@SETTINGS
@given(data=st.data(), candidates=batches(), thresh=thresholds())
def test_ohem_sampler(data, candidates, thresh):
    b = data.draw(st.integers(1, 24), label="B")
    per_image = data.draw(st.booleans(), label="per_image")
    nms = data.draw(st.one_of(st.none(), st.floats(0.1, 1.0)), label="nms_thresh")
    quota = data.draw(st.one_of(st.none(), st.floats(0.0, 1.0)), label="fg_fraction")
    rank_by = data.draw(st.sampled_from(["cls", "cls+box"]), label="rank_by")
    sampler = OHEMSampler(
        thresh,
        batch_size_per_image=b,
        per_image=per_image,
        nms_thresh=nms,
        rank_by=rank_by,
        fg_fraction=quota,
    )
    results = sampler(candidates, data.draw(score_fns(candidates), label="losses"))
    assigned = check_common(sampler, candidates, results)
    budgets = [(b, [r]) for r in results] if per_image else [(b * len(results), results)]
    for budget, group in budgets:
        assert sum(r.indices.numel() for r in group) <= budget
        if quota is not None:
            assert sum(r.num_fg for r in group) <= int(budget * quota)
    if nms is None and quota is None:  # nothing removed: the budget is filled as far as possible
        eligible = [int((labels >= 0).sum()) for labels in assigned]
        if per_image:
            assert [r.indices.numel() for r in results] == [min(b, e) for e in eligible]
        else:
            assert sum(r.indices.numel() for r in results) == min(b * len(results), sum(eligible))
    assert sampler.last_stats["num_selected"] == sum(r.indices.numel() for r in results)


@SETTINGS
@given(
    data=st.data(),
    candidates=batches(),
    thresh=thresholds(),
    ratio=st.floats(0.0, 5.0),
    minimum=st.integers(0, 10),
)
def test_hard_negative_sampler(data, candidates, thresh, ratio, minimum):
    sampler = HardNegativeSampler(thresh, neg_pos_ratio=ratio, min_negatives_per_image=minimum)
    results = sampler(candidates, data.draw(score_fns(candidates), label="losses"))
    for res, labels in zip(results, check_common(sampler, candidates, results)):
        fg, bg = int((labels > 0).sum()), int((labels == 0).sum())
        assert res.num_fg == fg  # all foreground kept
        assert res.num_bg == min(bg, max(int(ratio * fg), minimum))
        assert res.indices.tolist() == sorted(res.indices.tolist())


@SETTINGS
@given(candidates=batches(), thresh=thresholds())
def test_no_sampler_keeps_every_eligible_candidate(candidates, thresh):
    sampler = NoSampler(thresh)
    results = sampler(candidates)
    for res, labels in zip(results, check_common(sampler, candidates, results)):
        assert res.indices.tolist() == torch.nonzero(labels >= 0).flatten().tolist()
