"""The comparison's figures: which data of the runs' folders each plot shows, averaged over seeds.

* training loss: `loss` of log.csv (the sum of the model's losses), per logged iteration;
* fg share: `HEAD/fg_loss_share` of log.csv for the head whose sampler is compared (the RoI head
  of a two-stage detector, the dense head of RetinaNet, `seg/` for the kept pixels of a
  segmentation model): the share of that head's classification loss, summed over the candidates
  it trains on, that comes from foreground candidates;
* AP (segmentation: mIoU) during training: eval_history.json (the evaluations every
  train.eval_period iterations and at the end), mean over seeds: whether the budget was long
  enough (a curve still rising at the end was not); a method a race stopped ends where it stopped;
* AP (segmentation: mIoU) per method: metrics.json's, mean ± std over seeds (methods trained to
  the budget);
* precision-recall at IoU 0.5: pr50.json (written by the trainer's evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardmine.engine.coco_eval import PR_CURVE_FILE, read_pr_curve_json
from hardmine.engine.evaluation import EVAL_HISTORY_FILE, read_eval_history
from hardmine.report.hard_examples import MAIN_HEAD
from hardmine.report.plots import (
    Bar,
    Curve,
    method_colors,
    plot_ap_bars,
    plot_ap_curves,
    plot_fg_share,
    plot_loss_curves,
    plot_pr_curves,
)
from hardmine.report.results import MethodSummary, RunRecord, headline, mean_over_seeds, read_log_columns
from hardmine.segmentation.model import HEAD_NAME as SEGMENTATION_LOG_PREFIX

#: Config section of a head -> its prefix in log.csv.
LOG_PREFIX = {"roi_head": "roi", "dense_head": "dense", "rpn": "rpn"}


def fg_share_column(arch: str) -> str:
    """The log.csv column of the fg loss share of the part whose sampling is compared: the main
    head of a detector (`MAIN_HEAD`), the kept pixels of a segmentation model."""
    head = MAIN_HEAD.get(arch)
    return (
        f"{LOG_PREFIX[head]}/fg_loss_share"
        if head is not None
        else f"{SEGMENTATION_LOG_PREFIX}/fg_loss_share"
    )


@dataclass
class FigureFile:
    """A written plot: `path` relative to the report's folder, and what it shows."""

    key: str
    path: Path
    caption: str
    #: The heading it goes under; "" = the report's title for `key`.
    title: str = ""


def _log_curve(
    runs: Sequence[RunRecord], column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    series = []
    for run in runs:
        log = read_log_columns(Path(run.run_dir) / "log.csv", [column])
        if column in log and len(log[column]):
            series.append((log["iteration"], log[column]))
    return mean_over_seeds(series) if series else None


def _ap_curve(
    runs: Sequence[RunRecord], metric: str = "AP"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """`metric` (AP, or mIoU for segmentation; in percent) at every evaluation of the runs (up to
    where a race stopped them)."""
    series = []
    for run in runs:
        path = Path(run.run_dir) / EVAL_HISTORY_FILE
        if not path.is_file():
            continue
        entries = [
            e for e in read_eval_history(path) if run.stopped_at is None or e["iteration"] <= run.stopped_at
        ]
        if len(entries) > 1:
            series.append(
                (np.array([e["iteration"] for e in entries]), 100 * np.array([e[metric] for e in entries]))
            )
    return mean_over_seeds(series) if series else None


def _pr_curve(runs: Sequence[RunRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    series = []
    for run in runs:
        path = Path(run.run_dir) / PR_CURVE_FILE
        if path.is_file() and run.stopped_at is None:
            curve = read_pr_curve_json(path)
            if curve.precision:
                series.append((np.asarray(curve.recall), np.asarray(curve.precision)))
    return mean_over_seeds(series) if series else None


def make_figures(
    records: Sequence[RunRecord],
    summaries: Sequence[MethodSummary],
    arch: dict[str, str],
    folder: Path,
    subdir: str = "plots",
) -> list[FigureFile]:
    """Write the plots of the successful runs to `folder/subdir`; `arch` maps a method name to
    its model.arch (which head's log columns to read). Methods without data are left out."""
    ok = [r for r in records if r.ok]
    if not ok:
        return []
    colors = method_colors([s.name for s in summaries])
    loss, share, pr, ap = [], [], [], []
    for s in summaries:
        runs = [r for r in ok if r.name == s.name]
        if not runs:
            continue
        for out, column in ((loss, "loss"), (share, fg_share_column(arch[s.name]))):
            curve = _log_curve(runs, column)
            if curve is not None:
                out.append(Curve(s.name, s.family, *curve))
        for out, curve in ((pr, _pr_curve(runs)), (ap, _ap_curve(runs, headline(s.family)))):
            if curve is not None:
                out.append(Curve(s.name, s.family, *curve))
    full = [s for s in summaries if s.seeds and s.stopped_at is None]
    bars = [
        Bar(s.name, s.family, s.stats[headline(s.family)].mean, s.stats[headline(s.family)].std) for s in full
    ]
    metrics = list(dict.fromkeys(headline(s.family) for s in summaries))
    metric = " / ".join(metrics)  # AP, mIoU (segmentation) or both
    scored_by = " / ".join({"AP": "COCO AP (IoU 0.5:0.95)", "mIoU": "mIoU"}.get(m, m) for m in metrics)
    seeds = max(len(s.seeds) for s in summaries)
    spread = "; bands: ±1 std over seeds" if seeds > 1 else ""
    plots = folder / subdir
    written = []
    if loss:
        written.append(
            FigureFile(
                "loss",
                plot_loss_curves(loss, colors, plots / "loss.png").relative_to(folder),
                "Training loss (the sum of the model's losses, log scale) per logged iteration, mean "
                f"over seeds: faint raw, solid smoothed (exponential moving average){spread}. Losses of "
                "different methods are different functions; compare their shapes, not their levels.",
            )
        )
    if share:
        written.append(
            FigureFile(
                "fg_share",
                plot_fg_share(share, colors, plots / "fg_share.png").relative_to(folder),
                "Foreground share of the classification loss of the head whose candidates are chosen "
                "(`roi/fg_loss_share` of a two-stage detector, `dense/fg_loss_share` of RetinaNet, "
                "`seg/fg_loss_share` of a segmentation model: its kept pixels, in log.csv): the loss of "
                f"the foreground candidates it trains on over the loss of all of them{spread}. Near 0 the "
                "background candidates dominate the classification gradient.",
            )
        )
    if ap:
        written.append(
            FigureFile(
                "ap_curve",
                plot_ap_curves(ap, colors, plots / "ap_curve.png", metric).relative_to(folder),
                f"{scored_by} on the validation set at every evaluation during training (spec `evaluations`) "
                f"and at the end, mean over seeds{spread}. A curve still rising at the end means the "
                "budget was too short to rank the methods at convergence; a method a race stopped ends "
                "where it stopped.",
                f"{metric} during training",
            )
        )
    if bars:
        written.append(
            FigureFile(
                "ap",
                plot_ap_bars(bars, colors, plots / "ap.png", metric).relative_to(folder),
                f"{scored_by} per method on the validation set, mean over seeds"
                + ("; error bars: ±1 std over seeds." if seeds > 1 else " (one seed: no error bars)."),
                f"{metric} per method",
            )
        )
    if pr:
        written.append(
            FigureFile(
                "pr50",
                plot_pr_curves(pr, colors, plots / "pr50.png").relative_to(folder),
                "Precision against recall at IoU 0.5 on the validation set (COCO's interpolated curve "
                "at 101 recall points, mean over classes, up to 100 detections per image), mean over "
                f"seeds{spread}. The area under each curve is its AP50.",
            )
        )
    return written
