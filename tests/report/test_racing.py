"""Racing: the rungs of successive halving on the evaluation grid, who stops (never the baseline),
and the compute a race saves."""

from __future__ import annotations

import numpy as np
import pytest

from hardmine.errors import ConfigError
from hardmine.report.racing import eliminate, race_cost, race_rungs
from hardmine.report.verdicts import MethodScores, RunScores


def test_rungs_halve_the_budget_down_to_the_first_evaluation():
    assert race_rungs(500, 125) == [125, 250]
    assert race_rungs(20, 5) == [5, 10]
    assert race_rungs(1000, 100) == [100, 200, 500]  # 125 and 250 rounded down to evaluations
    assert race_rungs(600, 50) == [50, 150, 300]  # 75 rounded down to 50; 37.5 < 50 ends it
    with pytest.raises(ConfigError, match="evaluations: N"):
        race_rungs(500, 0)
    with pytest.raises(ConfigError, match="no evaluation before the budget"):
        race_rungs(500, 500)


def scores(name: str, family: str, replicates: list[float]) -> MethodScores:
    return MethodScores(name, family, {0: RunScores(0, float(np.mean(replicates)), np.array(replicates))}, 50)


def test_the_clearly_worse_stop_and_the_baseline_never_does():
    families = {
        "two-stage": [
            scores("random", "two-stage", [0.10, 0.11, 0.09, 0.10]),  # the baseline: clearly worse, runs on
            scores("OHEM", "two-stage", [0.20, 0.21, 0.19, 0.20]),  # the leader
            scores("IoU-balanced", "two-stage", [0.15, 0.16, 0.14, 0.15]),  # clearly worse: stops
            scores("close", "two-stage", [0.21, 0.18, 0.22, 0.17]),  # within the interval: runs on
        ],
        "one-stage": [scores("focal", "one-stage", [0.3] * 4), scores("ghm", "one-stage", [0.3] * 4)],
    }
    out = eliminate(families, {"two-stage": "random", "one-stage": "focal"}, rung=125)
    assert [(e.method, e.family, e.rung, e.against_leader.baseline) for e in out] == [
        ("IoU-balanced", "two-stage", 125, "OHEM")
    ]
    assert out[0].against_leader.difference == pytest.approx(-0.05)


def test_race_cost_counts_the_iterations_not_trained():
    cost = race_cost(budget=500, stopped=[(125, 0.4), (250, 0.2)], runs=6)
    assert (cost.trained, cost.full) == (3000 - 375 - 250, 3000)
    assert cost.saved_seconds == pytest.approx(375 * 0.4 + 250 * 0.2)
    assert cost.saved_share == pytest.approx(625 / 3000)
    assert cost.describe().startswith("trained 2375 of 3000 iterations (21% saved, about 3.3 min")
