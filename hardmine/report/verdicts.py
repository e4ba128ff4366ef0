"""Verdicts with uncertainty: how sure a comparison is that one method beats another.

Two sources of variation decide whether a gap in AP is real (Bouthillier et al., "Accounting for
variance in machine learning benchmarks", MLSys 2021): the training run (seed: initialisation,
data order, augmentation) and the finite validation set. rliable (Agarwal et al., NeurIPS 2021)
argues for interval estimates from a stratified bootstrap rather than point estimates. Here:

* per method, the mean AP over seeds with a Student-t 95% interval (two seeds or more), and a
  bootstrap 95% interval over validation images (also with one seed): the seed-mean AP on each
  image replicate (`image_bootstrap`), 2.5th and 97.5th percentiles;
* per method and baseline, the paired difference: the mean over their common seeds of (AP of the
  method - AP of the baseline) on the full validation set, with a two-stage bootstrap interval:
  replicate b draws n of the n common seeds with replacement (the same seeds for both methods) and
  uses image replicate b (the same images for every run); its difference is the mean over the drawn
  seeds of the two runs' AP difference on those images. 2.5th and 97.5th percentiles over the
  replicates. With one seed this is the paired bootstrap over images alone. With few seeds the seed
  stage is coarse (3 seeds give 10 distinct draws), which is why the per-method t interval is
  shown beside it;
* a verdict per method: better (the interval lies above 0), worse (below 0) or no clear
  difference; and a leader named only when its lead over every other method of the family has an
  interval above 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Confidence level of every interval.
CONFIDENCE = 0.95
#: Seed of the seed draws of the paired bootstrap (fixed, so the report is reproducible).
SEED_DRAW_SEED = 1

BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def format(self, scale: float = 100.0, signed: bool = False) -> str:
        """LOW to HIGH in percent points (AP in [0, 1] x 100), one decimal; two for a bound that one
        decimal would show as 0.0, so that the side of 0 it lies on stays visible."""
        return f"{_bound(scale * self.low, signed)} to {_bound(scale * self.high, signed)}"


def _bound(value: float, signed: bool) -> str:
    digits = 2 if value != 0 and abs(value) < 0.05 else 1
    return f"{value:{'+' if signed else ''}.{digits}f}"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """The Student-t interval of the mean of `values` (None for fewer than two)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    half = stats.t.ppf(0.5 + confidence / 2, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return Interval(float(x.mean() - half), float(x.mean() + half))


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> Interval | None:
    """The central `confidence` percentile interval of the finite `samples` (None if there are none)."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(x, [tail, 100 - tail])
    return Interval(float(low), float(high))


@dataclass
class RunScores:
    """One run's AP on the full validation set and on every image replicate ([replicates])."""

    seed: int
    ap: float
    replicates: np.ndarray


@dataclass
class MethodScores:
    """A method's runs that can be scored on resampled images, by seed, and the images they share."""

    name: str
    family: str
    runs: dict[int, RunScores]
    num_images: int
    #: The metric scored: COCO AP, or mIoU for segmentation.
    metric: str = "AP"


@dataclass
class MethodEstimate:
    """A method's mean AP over its seeds with a t interval over seeds (two or more) and a bootstrap
    interval over images."""

    name: str
    mean: float
    seeds: int
    images: int
    seed_interval: Interval | None
    image_interval: Interval | None


def estimate(method: MethodScores) -> MethodEstimate:
    aps = [run.ap for run in method.runs.values()]
    seed_mean = np.mean([run.replicates for run in method.runs.values()], axis=0)
    return MethodEstimate(
        name=method.name,
        mean=float(np.mean(aps)),
        seeds=len(aps),
        images=method.num_images,
        seed_interval=t_interval(aps),
        image_interval=percentile_interval(seed_mean),
    )


@dataclass
class PairedDifference:
    """AP of `method` minus AP of `baseline` over their common seeds and the same images, with its
    two-stage bootstrap interval."""

    method: str
    baseline: str
    difference: float
    interval: Interval
    seeds: int
    images: int
    metric: str = "AP"

    @property
    def verdict(self) -> str:
        if self.interval.low > 0:
            return BETTER
        if self.interval.high < 0:
            return WORSE
        return UNCLEAR

    def sentence(self) -> str:
        """E.g. "OHEM: +2.1 AP vs random sampling (95% CI +0.8 to +3.4; 3 seeds x 100 images): better"."""
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        return (
            f"{self.method}: {100 * self.difference:+.1f} {self.metric} vs {self.baseline} "
            f"({CONFIDENCE:.0%} CI {self.interval.format(signed=True)}; {seeds} x {self.images} images): "
            f"{self.verdict}"
        )


def paired_difference(method: MethodScores, baseline: MethodScores) -> PairedDifference | None:
    """`method` - `baseline` on their common seeds (None if they share none, or the images differ)."""
    seeds = sorted(set(method.runs) & set(baseline.runs))
    if not seeds or method.num_images != baseline.num_images:
        return None
    full = np.array([method.runs[s].ap - baseline.runs[s].ap for s in seeds])
    per_replicate = np.stack([method.runs[s].replicates - baseline.runs[s].replicates for s in seeds])
    replicates = per_replicate.shape[1]
    draws = np.random.default_rng(SEED_DRAW_SEED).integers(0, len(seeds), size=(replicates, len(seeds)))
    resampled = per_replicate[draws, np.arange(replicates)[:, None]].mean(axis=1)
    interval = percentile_interval(resampled)
    if interval is None:
        return None
    return PairedDifference(
        method.name, baseline.name, float(full.mean()), interval, len(seeds), method.num_images, method.metric
    )


@dataclass
class FamilyVerdicts:
    """A family's methods: estimates, the paired difference of each against the baseline, and what
    may be said about the leader."""

    family: str
    baseline: str
    estimates: list[MethodEstimate]
    comparisons: list[PairedDifference]
    leader: str
    metric: str = "AP"


def family_verdicts(methods: Sequence[MethodScores], baseline: str) -> FamilyVerdicts:
    """Verdicts of a family's `methods` (those with scores) against the one named `baseline`."""
    by_name = {m.name: m for m in methods}
    comparisons = []
    if baseline in by_name:
        for m in methods:
            if m.name != baseline:
                diff = paired_difference(m, by_name[baseline])
                if diff is not None:
                    comparisons.append(diff)
    family = methods[0].family if methods else ""
    metric = methods[0].metric if methods else "AP"
    return FamilyVerdicts(
        family, baseline, [estimate(m) for m in methods], comparisons, leader_statement(methods), metric
    )


def clearly_worse(methods: Sequence[MethodScores], keep: Sequence[str] = ()) -> list[PairedDifference]:
    """The methods whose paired interval against the one with the highest mean AP lies below 0,
    as differences to it; the names in `keep` are never listed."""
    if len(methods) < 2:
        return []
    top = max(methods, key=lambda m: estimate(m).mean)
    out = []
    for m in methods:
        if m.name == top.name or m.name in keep:
            continue
        diff = paired_difference(m, top)
        if diff is not None and diff.verdict == WORSE:
            out.append(diff)
    return out


def leader_statement(methods: Sequence[MethodScores]) -> str:
    """Which method leads, said only as far as the intervals allow."""
    if len(methods) < 2:
        return ""
    metric = methods[0].metric
    means = {m.name: estimate(m).mean for m in methods}
    best = max(means.values())
    tied = [m.name for m in methods if means[m.name] == best]
    if len(tied) > 1:
        return f"No clear best: {_names(tied)} share the highest mean {metric} ({100 * best:.1f})."
    top = next(m for m in methods if m.name == tied[0])
    ahead, level = [], []
    for m in methods:
        if m.name == top.name:
            continue
        diff = paired_difference(top, m)
        (ahead if diff is not None and diff.verdict == BETTER else level).append(m.name)
    shown = f"{100 * best:.1f}"
    if not level:
        return (
            f"Best: {top.name} ({shown} {metric}), clearly ahead of every other method "
            f"(paired {CONFIDENCE:.0%} intervals of its lead above 0)."
        )
    text = (
        f"No clear best: {top.name} has the highest mean {metric} ({shown}), but its lead over "
        f"{_names(level)} is within the paired {CONFIDENCE:.0%} interval"
    )
    return text + (f"; it is clearly ahead of {_names(ahead)}." if ahead else ".")


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
