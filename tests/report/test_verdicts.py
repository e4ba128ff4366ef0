"""Intervals and verdicts on hand-made numbers: a known Student-t interval, percentile intervals, the
paired two-stage bootstrap (seeds, then images), verdicts in words and what is said of the leader."""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest

from hardmine.report.verdicts import (
    BETTER,
    UNCLEAR,
    WORSE,
    Interval,
    MethodScores,
    PairedDifference,
    RunScores,
    clearly_worse,
    estimate,
    family_verdicts,
    leader_statement,
    paired_difference,
    percentile_interval,
    t_interval,
)


def test_t_interval_of_three_values():
    # mean 2, sample std 1, t(0.975, df=2) = 4.302652729749464: 2 -/+ 4.3027 / sqrt(3)
    interval = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert astuple(interval) == pytest.approx((2 - half, 2 + half))
    assert interval.low == pytest.approx(-0.484138, abs=1e-6)
    assert t_interval([5.0]) is None  # one seed: no spread


def test_percentile_interval_ignores_nan():
    samples = np.concatenate([np.arange(101, dtype=float), [np.nan]])
    assert astuple(percentile_interval(samples)) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.array([np.nan])) is None


def method(name: str, runs: dict[int, tuple[float, list[float]]]) -> MethodScores:
    return MethodScores(
        name, "two-stage", {s: RunScores(s, ap, np.array(r)) for s, (ap, r) in runs.items()}, 10
    )


def test_one_seed_paired_difference_is_the_image_bootstrap_of_the_difference():
    base = method("random", {0: (0.20, [0.10, 0.20, 0.30, 0.25])})
    ohem = method("OHEM", {0: (0.23, [0.14, 0.22, 0.34, 0.29])})  # +0.04, +0.02, +0.04, +0.04
    diff = paired_difference(ohem, base)
    assert diff.difference == pytest.approx(0.03) and (diff.seeds, diff.images) == (1, 10)
    assert astuple(diff.interval) == pytest.approx((0.0215, 0.04))  # np.percentile of the four
    assert diff.verdict == BETTER
    assert paired_difference(base, ohem).verdict == WORSE


def test_two_stage_bootstrap_draws_the_same_seeds_for_both_methods():
    # Per seed, the difference is constant over images: seed 0 +1, seed 1 +3 (points of AP / 100).
    base = method("random", {0: (0.1, [0.1] * 400), 1: (0.1, [0.1] * 400)})
    other = method("other", {0: (0.11, [0.11] * 400), 1: (0.13, [0.13] * 400)})
    diff = paired_difference(other, base)
    assert diff.difference == pytest.approx(0.02) and diff.seeds == 2
    # every replicate is the mean of two drawn seeds: +1 (0,0), +2 (0,1 or 1,0) or +3 (1,1)
    assert astuple(diff.interval) == pytest.approx((0.01, 0.03))
    assert diff.verdict == BETTER
    # a seed the baseline lacks is not compared
    lonely = method("lonely", {5: (0.3, [0.3] * 400)})
    assert paired_difference(lonely, base) is None


def test_sentence_and_unclear_verdict():
    diff = PairedDifference("OHEM", "random sampling", 0.021, Interval(0.008, 0.034), 3, 100)
    assert diff.sentence() == (
        "OHEM: +2.1 AP vs random sampling (95% CI +0.8 to +3.4; 3 seeds x 100 images): better"
    )
    close = PairedDifference("OHEM", "random", -0.014, Interval(-0.029, -0.0004), 1, 100)
    assert "(95% CI -2.9 to -0.04; 1 seed x 100 images): worse" in close.sentence()  # not "-0.0"
    unclear = PairedDifference("GHM", "focal", -0.004, Interval(-0.012, 0.003), 1, 100)
    assert unclear.verdict == UNCLEAR and "1 seed x 100 images): no clear difference" in unclear.sentence()


def test_estimate_has_seed_and_image_intervals():
    m = method("m", {0: (0.1, [0.0, 0.1, 0.2, 0.3]), 1: (0.2, [0.1, 0.2, 0.3, 0.4]), 2: (0.3, [0.2] * 4)})
    e = estimate(m)
    assert e.mean == pytest.approx(0.2) and e.seeds == 3
    assert astuple(e.seed_interval) == pytest.approx(astuple(t_interval([0.1, 0.2, 0.3])))
    # the seed-mean on each replicate: 0.1, 0.1667, 0.2333, 0.3
    expected = percentile_interval(np.array([0.1, 0.5 / 3, 0.7 / 3, 0.3]))
    assert astuple(e.image_interval) == pytest.approx(astuple(expected))


def test_the_leader_is_named_only_when_clearly_ahead():
    a = method("a", {0: (0.30, [0.30, 0.31, 0.29, 0.30])})
    b = method("b", {0: (0.20, [0.20, 0.21, 0.19, 0.20])})
    c = method("c", {0: (0.29, [0.31, 0.28, 0.30, 0.27])})
    assert leader_statement([a, b]).startswith("Best: a (30.0 AP), clearly ahead of every other method")
    text = leader_statement([a, b, c])
    assert text.startswith("No clear best: a has the highest mean AP (30.0), but its lead over c is within")
    assert text.endswith("it is clearly ahead of b.")
    assert "share the highest mean AP" in leader_statement([a, method("a2", {0: (0.30, [0.3] * 4)})])
    assert [d.method for d in clearly_worse([a, b, c])] == ["b"]
    assert clearly_worse([a, b, c], keep=["b"]) == []

    verdicts = family_verdicts([b, a, c], baseline="b")
    assert [(d.method, d.verdict) for d in verdicts.comparisons] == [("a", BETTER), ("c", BETTER)]
    assert verdicts.leader == text and [e.name for e in verdicts.estimates] == ["b", "a", "c"]
