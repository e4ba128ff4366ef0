"""Evaluating a detector: its predictions on a dataset (sharded over the processes of a distributed
run), the metric set `eval.metric` asks for (COCO through `coco_eval`, VOC through `voc_eval`), a
checkpoint's metrics (`hardmine eval`), and the evaluation history of a training run
(`eval_history.json`, `train.eval_period`) with the detections of each evaluation (`detections/`),
from which `hardmine compare` re-scores resampled sets of images (its confidence intervals).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hardmine import distributed
from hardmine.config import Config
from hardmine.data.records import DatasetIndex
from hardmine.engine.checkpoint import atomic_write
from hardmine.engine.coco_eval import (
    PR_CURVE_FILE,
    coco_evaluation,
    write_coco_results,
    write_metrics_json,
    write_pr_curve_json,
)
from hardmine.engine.inference import checked_split, load_trained, predict_dataset
from hardmine.engine.proposals import load_split_proposals
from hardmine.engine.tta import TestTimeAugmentation
from hardmine.engine.voc_eval import voc_metrics

#: File name of a training run's evaluations during training (and at the end), next to metrics.json.
EVAL_HISTORY_FILE = "eval_history.json"
#: Folder of a training run that holds the detections of each of its evaluations (`detections_file`).
DETECTIONS_DIR = "detections"
#: File name of `hardmine eval`'s detections, next to its metrics.json.
DETECTIONS_FILE = "detections.json"


def detections_file(run_dir: Path, iteration: int) -> Path:
    """Where a training run keeps the detections of its evaluation after `iteration`: a COCO
    results file (`coco_eval.to_coco_results`) on its validation set."""
    return run_dir / DETECTIONS_DIR / f"{iteration:07d}.json"


def evaluate_model(
    model: nn.Module,
    cfg: Config,
    index: DatasetIndex,
    device: torch.device,
    proposals: dict[int, Tensor] | None = None,
    pr_curve_path: Path | None = None,
    detections_path: Path | None = None,
) -> dict[str, float]:
    """COCO (and/or VOC) metrics of `model` on `index` (see `compute_metrics` for `pr_curve_path`
    and `detections_path`),
    with the multi-scale / flip testing of `cfg.eval` if it asks for any.

    In a distributed run every process predicts its shard of the images (every world_size-th one,
    starting at its rank) with `model` (the plain model, not its DDP wrapper); rank 0 gathers the
    predictions, computes the metrics (and writes `pr_curve_path`), and every process returns them.
    """
    shard = index
    if distributed.is_distributed():
        rank, world = distributed.rank(), distributed.world_size()
        shard = dataclasses.replace(index, records=index.records[rank::world])
    predictions = predict_dataset(
        model,
        shard,
        device,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        proposals=proposals,
        tta=TestTimeAugmentation.from_config(cfg.eval),
    )
    if not distributed.is_distributed():
        return compute_metrics(cfg, index, predictions, pr_curve_path, detections_path)
    shards = distributed.gather_objects(predictions)
    metrics = None
    if shards is not None:  # rank 0
        merged = {image_id: p for part in shards for image_id, p in part.items()}
        metrics = compute_metrics(cfg, index, merged, pr_curve_path, detections_path)
    return distributed.broadcast_object(metrics)


def compute_metrics(
    cfg: Config,
    index: DatasetIndex,
    predictions: dict[int, dict[str, Tensor]],
    pr_curve_path: Path | None = None,
    detections_path: Path | None = None,
) -> dict[str, float]:
    """The metric set `cfg.eval.metric` asks for (auto: COCO, plus VOC metrics for VOC data).

    With COCO metrics and a `pr_curve_path`, the precision-recall curve at IoU 0.5 is written there
    too (`write_pr_curve_json`), for reports that plot it. With a `detections_path`, the predictions
    are written there as a COCO results file, so that they can be scored again without the model.
    """
    metric = cfg.eval.metric
    if metric == "auto":
        metric = "coco" if index.source.suffix == ".json" else "both"  # VOC: the split file
    metrics: dict[str, float] = {}
    if metric in ("coco", "both"):
        coco, pr_curve = coco_evaluation(index, predictions)
        metrics.update(coco)
        if pr_curve_path is not None:
            write_pr_curve_json(pr_curve_path, pr_curve)
    if metric in ("voc", "both"):
        metrics.update(voc_metrics(index, predictions))
    if detections_path is not None:
        write_coco_results(detections_path, index, predictions)
    return metrics


def evaluate_checkpoint(
    checkpoint: str | Path, overrides: list[str], out: Path
) -> tuple[dict[str, float], Path]:
    """Evaluate a checkpoint's model (its config with `overrides`) on its data.val; write
    `out/metrics.json` (with the checkpoint and the dataset), `out/pr50.json` and the detections
    (`out/detections.json`). Returns the metrics and the metrics.json path."""
    cfg, model, payload, device = load_trained(checkpoint, overrides)
    index = checked_split(cfg, payload, "val", checkpoint)
    proposals = load_split_proposals(cfg, "val", index)
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_model(
        model,
        cfg,
        index,
        device,
        proposals=proposals,
        pr_curve_path=out / PR_CURVE_FILE,
        detections_path=out / DETECTIONS_FILE,
    )
    path = write_metrics_json(
        out / "metrics.json", metrics, extra={"checkpoint": str(checkpoint), "dataset": str(index.source)}
    )
    return metrics, path


def read_eval_history(path: Path) -> list[dict[str, Any]]:
    """The entries of an eval_history.json: `{"iteration": N, "AP": ..., "AP50": ..., ...}` each, in
    the order of the iterations."""
    return list(json.loads(path.read_text())["evaluations"])


def write_eval_history(path: Path, entries: list[dict[str, Any]]) -> Path:
    """Write `entries` (see `read_eval_history`) to `path`, atomically."""
    with atomic_write(path) as fh:
        fh.write((json.dumps({"evaluations": entries}, indent=1) + "\n").encode())
    return path
