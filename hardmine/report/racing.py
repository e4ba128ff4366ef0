"""Racing (`hardmine compare --race`): stop the methods that are clearly worse early, and spend the
budget on the others.

The schedule is successive halving's (Jamieson & Talwalkar, AISTATS 2016; ASHA, Li et al., MLSys
2020) with reduction factor 2: the methods are compared at budget / 2^k iterations, k = K..1 (the
rungs, each an iteration at which the runs evaluate: a multiple of train.eval_period), and last at
the budget. Every run trains to a rung and stops there with a checkpoint (`train.stop_at`); the
comparison scores all of them at that rung and stops the methods it finds clearly worse; the others
resume from their checkpoints (exactly: a resumed run continues as if it had not stopped).

What differs from successive halving is the elimination rule: not a fixed fraction (the top 1/2
go on) by a point estimate, but the intervals of the report (`verdicts`): a method stops when the
paired 95% interval of its AP minus that of the family's leader at the rung lies below 0; the
family's baseline always runs to the end (every verdict is against it). So nothing stops while
the evidence is unclear, and with one seed the interval is that of the images alone.

Why not Optuna's SuccessiveHalvingPruner or Ray Tune's ASHA: both keep a fixed fraction by a point
estimate (no intervals, no seeds, no baseline), and both want to drive the trials (an Optuna
study in this process, a Ray cluster); the runs here are already separate, resumable processes or
cluster jobs, so the race is this rung schedule and `verdicts.clearly_worse`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hardmine.errors import ConfigError
from hardmine.report.verdicts import MethodScores, PairedDifference, clearly_worse

#: Successive halving's reduction factor: rung k is at budget / REDUCTION^k iterations.
REDUCTION = 2


def race_rungs(budget: int, eval_period: int) -> list[int]:
    """The iterations before the budget at which the race compares the methods, ascending: budget /
    2^k for k = 1, 2, ... down to the first evaluation, each rounded down to an evaluation."""
    if eval_period <= 0:
        raise ConfigError(
            "--race compares the runs at evaluations during training: give the spec `evaluations: N` "
            "(e.g. 4: every budget / 4 iterations)"
        )
    rungs: set[int] = set()
    point = budget / REDUCTION
    while point >= eval_period:
        rungs.add(int(point) // eval_period * eval_period)
        point /= REDUCTION
    rungs.discard(budget)
    if not rungs:
        raise ConfigError(
            f"--race: no evaluation before the budget ({budget} iterations, one every {eval_period}); "
            "give the spec more `evaluations`"
        )
    return sorted(rungs)


@dataclass(frozen=True)
class Elimination:
    """A method stopped at `rung`: its paired difference to the family's leader there."""

    method: str
    family: str
    rung: int
    against_leader: PairedDifference


def eliminate(
    families: Mapping[str, Sequence[MethodScores]], baselines: Mapping[str, str], rung: int
) -> list[Elimination]:
    """The methods of each family clearly worse than its leader at `rung` (never its baseline)."""
    out = []
    for family, methods in families.items():
        keep = [baselines[family]] if family in baselines else []
        for diff in clearly_worse(methods, keep=keep):
            out.append(Elimination(diff.method, family, rung, diff))
    return out


@dataclass(frozen=True)
class RaceCost:
    """Training iterations of a raced comparison against the same runs trained to the budget."""

    trained: int
    full: int
    saved_seconds: float

    @property
    def saved_share(self) -> float:
        return 1 - self.trained / self.full if self.full else 0.0

    def describe(self) -> str:
        return (
            f"trained {self.trained} of {self.full} iterations ({100 * self.saved_share:.0f}% saved, "
            f"about {self.saved_seconds / 60:.1f} min of training at the stopped runs' own speed)"
        )


def race_cost(budget: int, stopped: Sequence[tuple[int, float]], runs: int) -> RaceCost:
    """The cost of a race of `runs` runs of `budget` iterations in which `stopped` lists (rung,
    seconds per iteration) of each run that stopped early."""
    full = budget * runs
    saved = sum(budget - rung for rung, _ in stopped)
    seconds = sum((budget - rung) * s_per_iter for rung, s_per_iter in stopped)
    return RaceCost(full - saved, full, seconds)


@dataclass
class RaceSummary:
    """What a race did: its rungs, who stopped where (and why), and the compute it saved."""

    rungs: list[int]
    eliminations: list[Elimination]
    cost: RaceCost

    def stopped_at(self, name: str) -> int | None:
        return next((e.rung for e in self.eliminations if e.method == name), None)
