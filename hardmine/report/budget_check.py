"""`hardmine compare --budget-check`: is the budget where the models have stopped improving?

Each family's baseline trains again, with the same seeds, for `FACTOR` times the budget (its
step schedule moved with it, `CompareSpec.run_overrides`), and its AP there is compared with its AP
at the budget: the same paired interval over seeds and validation images as the verdicts
(`verdicts.paired_difference`). A baseline that still gains clearly at 1.5x the budget says the
verdicts rank the methods early in training, not where they end; one that gains nothing clear has
levelled off. The check runs are separate methods named "BASELINE, N iterations" in OUT/runs; they
stay out of the results tables and plots.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from hardmine.errors import ConfigError
from hardmine.report.runs import PlannedRun
from hardmine.report.scores import Scorer
from hardmine.report.spec import CompareSpec
from hardmine.report.verdicts import (
    BETTER,
    CONFIDENCE,
    WORSE,
    MethodEstimate,
    PairedDifference,
    estimate,
    paired_difference,
)

#: The check's budget, as a multiple of the comparison's (the field's convention: a budget is
#: justified when 1.5x it no longer helps the baseline).
FACTOR = 1.5


def check_budget(budget: int) -> int:
    """The check runs' iterations for a comparison of `budget` iterations."""
    return math.ceil(FACTOR * budget)


def check_name(baseline: str, longer: int) -> str:
    """The check run of `baseline` at `longer` iterations, as the report names it."""
    return f"{baseline}, {longer} iterations"


def check_spec(spec: CompareSpec) -> CompareSpec:
    """`spec` reduced to each family's baseline, renamed "NAME, N iterations", at `check_budget`."""
    longer = check_budget(spec.budget)
    names = {run.name for run in spec.runs}
    runs = []
    for family in dict.fromkeys(run.family for run in spec.runs):
        baseline = next(run for run in spec.runs if run.name == spec.baseline_of(family))
        name = check_name(baseline.name, longer)
        if name in names:
            raise ConfigError(
                f"{spec.source}: --budget-check names its run {name!r}, which the spec already uses"
            )
        runs.append(dataclasses.replace(baseline, name=name))
    return dataclasses.replace(spec, runs=tuple(runs), budget=longer, baselines=tuple(r.name for r in runs))


@dataclass
class BudgetCheck:
    """A family's baseline at the budget and at `FACTOR` times it (estimates: None where no run
    of that side was scored), and the paired difference (longer minus budget)."""

    family: str
    baseline: str
    budget: int
    longer: int
    at_budget: MethodEstimate | None
    at_longer: MethodEstimate | None
    difference: PairedDifference | None

    @property
    def reading(self) -> str:
        """What the difference says about the budget, in words."""
        if self.difference is None:
            return "no check: the baseline has no scored run at one of the two budgets"
        if self.difference.verdict == BETTER:
            return (
                f"still rising: the verdicts rank the methods early in training; a longer --budget "
                f"(at least {self.longer}) may change them"
            )
        if self.difference.verdict == WORSE:
            return "lower at the longer budget: the baseline is past its best at this budget"
        return "no clear gain: the baseline has levelled off at this budget, within the noise"

    def sentence(self) -> str:
        """E.g. "two-stage: random sampling +6.3 AP from 400 to 600 iterations (95% CI +4.0 to
        +8.6; 3 seeds x 100 images): still rising: ..."."""
        if self.difference is None:
            return f"{self.family}: {self.baseline}: {self.reading}"
        d = self.difference
        seeds = f"{d.seeds} seed{'s' if d.seeds > 1 else ''}"
        return (
            f"{self.family}: {self.baseline} {100 * d.difference:+.1f} {d.metric} from {self.budget} to "
            f"{self.longer} iterations ({CONFIDENCE:.0%} CI {d.interval.format(signed=True)}; {seeds} x "
            f"{d.images} images): {self.reading}"
        )


def budget_checks(
    spec: CompareSpec, finished: Sequence[PlannedRun], checks: Sequence[PlannedRun], scorer: Scorer
) -> list[BudgetCheck]:
    """Per family with a check run, its baseline's `BudgetCheck`. `finished`: the comparison's
    scorable runs; `checks`: the check runs that finished."""
    longer = check_budget(spec.budget)
    baselines = {f: spec.baseline_of(f) for f in dict.fromkeys(run.family for run in spec.runs)}
    own = [p for p in finished if p.run.name == baselines[p.run.family]]
    families = scorer.methods([*own, *checks], lambda p: p.budget)
    found = []
    for family, baseline in baselines.items():
        if not any(p.run.family == family for p in checks):
            continue
        methods = {m.name: m for m in families.get(family, [])}
        short, long = methods.get(baseline), methods.get(check_name(baseline, longer))
        found.append(
            BudgetCheck(
                family,
                baseline,
                spec.budget,
                longer,
                estimate(short) if short else None,
                estimate(long) if long else None,
                paired_difference(long, short) if short and long else None,
            )
        )
    return found
