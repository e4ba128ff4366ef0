"""`--budget-check`: the spec of each family's baseline at 1.5x the budget, and what its paired
difference says (the end-to-end run is in test_compare.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hardmine.errors import ConfigError
from hardmine.report.budget_check import BudgetCheck, check_budget, check_spec
from hardmine.report.spec import DEFAULT_SPEC, load_spec
from hardmine.report.verdicts import Interval, MethodEstimate, PairedDifference


def test_the_check_spec_is_each_baseline_at_1_5x_with_its_steps_moved():
    spec = load_spec(DEFAULT_SPEC)  # 400 iterations, 2 evaluations, step at 333
    check = check_spec(spec)
    assert [(r.name, r.family, r.preset.name) for r in check.runs] == [
        ("random sampling, 600 iterations", "two-stage", "faster_rcnn.yaml"),
        ("alpha-balanced CE, 600 iterations", "one-stage", "retinanet.yaml"),
    ]
    assert check.budget == 600 and check.seeds == spec.seeds and check.eval_period == 300
    assert check.baselines == ("random sampling, 600 iterations", "alpha-balanced CE, 600 iterations")
    overrides = check.run_overrides(check.runs[0], 0, Path("out"))
    assert "solver.max_iter=600" in overrides and "solver.steps=[500]" in overrides
    # the baseline named on the command line is the one checked
    other = check_spec(spec.with_options(baselines=["focal loss"]))
    assert [r.name for r in other.runs] == ["random sampling, 600 iterations", "focal loss, 600 iterations"]
    assert [check_budget(b) for b in (1, 3, 400, 401)] == [2, 5, 600, 602]


def test_a_check_name_the_spec_already_uses_is_refused():
    spec = load_spec(DEFAULT_SPEC)
    taken = dataclasses.replace(spec.runs[1], name="random sampling, 600 iterations")
    clash = dataclasses.replace(spec, runs=(spec.runs[0], taken, *spec.runs[2:]))
    with pytest.raises(ConfigError, match="--budget-check names its run 'random sampling, 600 iterations'"):
        check_spec(clash)


def estimate(mean: float) -> MethodEstimate:
    return MethodEstimate("random sampling", mean, 3, 100, Interval(mean - 0.02, mean + 0.02), None)


def check(low: float, high: float) -> BudgetCheck:
    difference = PairedDifference(
        "random sampling, 600 iterations", "random sampling", 0.063, Interval(low, high), 3, 100
    )
    return BudgetCheck("two-stage", "random sampling", 400, 600, estimate(0.278), estimate(0.341), difference)


def test_the_reading_follows_the_interval_of_the_gain():
    rising = check(0.040, 0.086)
    assert rising.reading.startswith("still rising: the verdicts rank the methods early in training")
    assert "(at least 600)" in rising.reading
    assert rising.sentence() == (
        "two-stage: random sampling +6.3 AP from 400 to 600 iterations (95% CI +4.0 to +8.6; 3 seeds x "
        f"100 images): {rising.reading}"
    )
    assert check(-0.010, 0.020).reading.startswith("no clear gain: the baseline has levelled off")
    assert check(-0.050, -0.010).reading.startswith("lower at the longer budget")
    missing = BudgetCheck("two-stage", "random sampling", 400, 600, estimate(0.278), None, None)
    assert (
        missing.reading.startswith("no check")
        and missing.sentence() == f"two-stage: random sampling: {missing.reading}"
    )
