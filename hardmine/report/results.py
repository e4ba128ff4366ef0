"""Results of a comparison: one record per trained run, their aggregation per method (mean ± std
over seeds, for metrics and for logged curves), the text table printed at the end, and the CSV /
JSON files for the user's own analysis.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardmine.engine.coco_eval import METRIC_KEYS

#: Per-run cost columns of metrics.json, averaged over seeds like the metrics.
COST_KEYS = ("seconds_per_iter", "images_per_second", "peak_memory_mb")
#: The metrics of a segmentation family's table (the detection families': COCO's METRIC_KEYS).
SEGMENTATION_KEYS = ("mIoU", "pixel_accuracy")
#: Families that are scored by mIoU rather than AP.
SEGMENTATION_FAMILY = "segmentation"


def metric_keys(family: str) -> tuple[str, ...]:
    """The metrics a family's table shows: mIoU and pixel accuracy for segmentation, else COCO's."""
    return SEGMENTATION_KEYS if family == SEGMENTATION_FAMILY else METRIC_KEYS


def headline(family: str) -> str:
    """The metric a family is ranked and plotted by: mIoU for segmentation, else AP."""
    return metric_keys(family)[0]


#: Column titles of the metrics and costs in tables.
TITLES = {
    "AP": "AP",
    "AP50": "AP50",
    "AP75": "AP75",
    "APs": "APs",
    "APm": "APm",
    "APl": "APl",
    "AR100": "AR@100",
    "mIoU": "mIoU",
    "pixel_accuracy": "pixel accuracy",
    "seconds_per_iter": "s/iter",
    "images_per_second": "images/s",
    "peak_memory_mb": "peak memory (MB)",
}

#: Run status: trained now, finished by an earlier invocation (skipped), failed, or stopped early
#: by a race (`hardmine compare --race`).
TRAINED, SKIPPED, FAILED, STOPPED = "trained", "skipped", "failed", "stopped"


@dataclass
class RunRecord:
    """One run (a method with one seed) as the comparison saw it.

    metrics: the run's metrics.json (COCO metrics in [0, 1], -1 where no ground truth falls in a
    range, then costs and run facts), None if it failed; for a run a race stopped, its evaluation
    at `stopped_at`. error: the tail of its log if it failed. command: the `hardmine train ...` line
    that reproduces it. versions: library versions it ran with.
    """

    name: str
    family: str
    seed: int
    status: str
    run_dir: str
    command: str
    metrics: dict[str, Any] | None = None
    wall_s: float | None = None
    error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    stopped_at: int | None = None
    #: What is wrong with the output of its last evaluation, where something is (`degenerate_output`).
    degenerate: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != FAILED


#: Widest score range within one class that still counts as one score. Measured over every run
#: of docs/BENCHMARKS.md: the collapsed heads' final scores spread at most 0.0023 within their
#: class, the live detectors' 0.012 or more, even one that found only 10 objects.
FLAT_SCORE_SPREAD = 0.005


def degenerate_output(detections: Sequence[dict[str, Any]]) -> str | None:
    """Why a detector's detections (a COCO results list) show that it does not work at all, or
    None: no detections (no score above the test threshold: the classifier has not left its
    prior), or one score per class on every detection, within `FLAT_SCORE_SPREAD` (the output no
    longer depends on the image: a collapsed head, e.g. a hidden layer whose ReLUs all died)."""
    if not detections:
        return "no detections"
    by_class: dict[Any, list[float]] = {}
    for detection in detections:
        by_class.setdefault(detection["category_id"], []).append(float(detection["score"]))
    if all(len(scores) < 2 for scores in by_class.values()):
        return None  # one detection per class is no evidence
    if any(max(scores) - min(scores) > FLAT_SCORE_SPREAD for scores in by_class.values()):
        return None
    low = min(min(scores) for scores in by_class.values())
    high = max(max(scores) for scores in by_class.values())
    value = f"{low:.4f}" if f"{low:.4f}" == f"{high:.4f}" else f"{low:.4f}-{high:.4f}"
    per_class = " (one score per class)" if len(by_class) > 1 else ""
    return f"collapsed: all {len(detections)} detections score {value}{per_class}"


@dataclass
class MeanStd:
    """Mean and sample standard deviation over the seeds that have a value (std None for one)."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanStd:
        if not values:
            return cls(None, None, 0)
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class MethodSummary:
    """A compared method aggregated over its seeds: `stats` per key of its family's metrics
    (`metric_keys`) and COST_KEYS (`stopped_at`: the iteration a race stopped it at, its metrics
    are from there)."""

    name: str
    family: str
    seeds: list[int]
    failed_seeds: list[int]
    stats: dict[str, MeanStd]
    stopped_at: int | None = None


def _values(runs: Sequence[RunRecord], key: str) -> list[float]:
    """The key's value in every successful run; COCO's -1 (no ground truth in range) is no value."""
    out = []
    for run in runs:
        value = (run.metrics or {}).get(key)
        if isinstance(value, int | float) and math.isfinite(value) and not (key in METRIC_KEYS and value < 0):
            out.append(float(value))
    return out


def summarize(runs: Sequence[RunRecord]) -> list[MethodSummary]:
    """One summary per method, in the order the methods first appear in `runs`."""
    names = list(dict.fromkeys(run.name for run in runs))
    summaries = []
    for name in names:
        own = [run for run in runs if run.name == name]
        ok = [run for run in own if run.ok]
        summaries.append(
            MethodSummary(
                name=name,
                family=own[0].family,
                seeds=[run.seed for run in ok],
                failed_seeds=[run.seed for run in own if not run.ok],
                stats={
                    key: MeanStd.of(_values(ok, key)) for key in (*metric_keys(own[0].family), *COST_KEYS)
                },
                stopped_at=next((run.stopped_at for run in ok if run.stopped_at is not None), None),
            )
        )
    return summaries


def format_stat(stat: MeanStd, key: str) -> str:
    """A cell: metrics in percent with one decimal ("15.2 ± 0.8"; no ± for one seed), s/iter with
    three decimals, images/s with one, memory in whole MB; "–" without a value."""
    if stat.mean is None:
        return "–"
    scale, digits = {
        "seconds_per_iter": (1.0, 3),
        "images_per_second": (1.0, 1),
        "peak_memory_mb": (1.0, 0),
    }.get(key, (100.0, 1))
    text = f"{scale * stat.mean:.{digits}f}"
    if stat.std is not None and key not in COST_KEYS:
        text += f" ± {scale * stat.std:.{digits}f}"
    return text


def table_rows(summaries: Sequence[MethodSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a results table (one family): method, seeds, metrics, costs."""
    keys = (*metric_keys(summaries[0].family), *COST_KEYS) if summaries else (*METRIC_KEYS, *COST_KEYS)
    header = ["method", "seeds", *(TITLES[k] for k in keys)]
    rows = []
    for s in summaries:
        seeds = str(len(s.seeds)) + (f" ({len(s.failed_seeds)} failed)" if s.failed_seeds else "")
        if s.stopped_at is not None:
            seeds += f" (stopped at {s.stopped_at})"
        rows.append([s.name, seeds, *(format_stat(s.stats[k], k) for k in keys)])
    return header, rows


def seed_rows(
    summaries: Sequence[MethodSummary], runs: Sequence[RunRecord]
) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of a family's headline metric seed by seed (one column per seed, "failed"
    where the run failed, its `degenerate` note in brackets): the table behind each mean ± std.
    None with one seed and nothing degenerate, where it would repeat the results table."""
    names = {s.name for s in summaries}
    own = [run for run in runs if run.name in names]
    seeds = sorted({run.seed for run in own})
    if not summaries or (len(seeds) < 2 and not any(run.degenerate for run in own)):
        return None
    key = headline(summaries[0].family)
    cells = {(run.name, run.seed): _seed_cell(run, key) for run in own}
    header = ["method", *(f"{TITLES[key]}, seed {seed}" for seed in seeds)]
    return header, [[s.name, *(cells.get((s.name, seed), "–") for seed in seeds)] for s in summaries]


def _seed_cell(run: RunRecord, key: str) -> str:
    if not run.ok:
        return "failed"
    values = _values([run], key)
    text = f"{100 * values[0]:.1f}" if values else "–"
    return f"{text} ({run.degenerate})" if run.degenerate else text


def families(summaries: Sequence[MethodSummary]) -> dict[str, list[MethodSummary]]:
    """Summaries grouped by detector family, families in order of first appearance."""
    groups: dict[str, list[MethodSummary]] = {}
    for s in summaries:
        groups.setdefault(s.family, []).append(s)
    return groups


def format_text_table(summaries: Sequence[MethodSummary]) -> str:
    """The results as aligned text, one block per family (printed at the end of a comparison)."""
    blocks = []
    for family, members in families(summaries).items():
        header, rows = table_rows(members)
        header[0] = family
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in [header, *rows]
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_results_csv(path: Path, runs: Sequence[RunRecord]) -> Path:
    """One row per run: name, family, seed, status, every metrics.json entry (metrics, then costs and
    run facts), wall time, what is degenerate about its output (`degenerate_output`; empty when
    nothing is), folder and command; failed runs leave the metric cells empty."""
    keys = list(dict.fromkeys(k for run in runs for k in (run.metrics or {}) if k not in COST_KEYS))
    header = [
        "name",
        "family",
        "seed",
        "status",
        *keys,
        *COST_KEYS,
        "wall_s",
        "degenerate",
        "run_dir",
        "command",
    ]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for run in runs:
            metrics = run.metrics or {}
            writer.writerow(
                [
                    run.name,
                    run.family,
                    run.seed,
                    run.status,
                    *(metrics.get(k, "") for k in keys),
                    *(metrics.get(k, "") for k in COST_KEYS),
                    "" if run.wall_s is None else f"{run.wall_s:.1f}",
                    run.degenerate or "",
                    run.run_dir,
                    run.command,
                ]
            )
    return path


def write_results_json(
    path: Path,
    runs: Sequence[RunRecord],
    summaries: Sequence[MethodSummary],
    about: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """{"comparison": about, "methods": per-method mean/std/n, "runs": every RunRecord, then the
    `extra` sections (verdicts, race)}."""
    payload = {
        "comparison": about,
        "methods": [asdict(s) for s in summaries],
        "runs": [asdict(r) for r in runs],
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    """numpy values (bootstrap replicates, scores) as plain JSON numbers and lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_log_columns(log_csv: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """`iteration` and each of `columns` present in a run's log.csv, as float arrays; NaN where a
    row leaves a column empty (e.g. `eval/AP` outside the iterations that evaluated)."""
    with log_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    wanted = ["iteration", *columns]
    present = [c for c in wanted if rows and c in rows[0]]
    return {c: np.array([float(r[c]) if r[c] else np.nan for r in rows]) for c in present}


def mean_over_seeds(
    series: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Average (x, y) series of several seeds on the x values they share: (x, mean, std or None
    for a single series). Runs of one method log the same iterations, so nothing is interpolated."""
    common = series[0][0]
    for x, _ in series[1:]:
        common = np.intersect1d(common, x)
    stacked = np.stack([y[np.isin(x, common)] for x, y in series])
    std = stacked.std(axis=0, ddof=1) if len(series) > 1 else None
    return common, stacked.mean(axis=0), std
