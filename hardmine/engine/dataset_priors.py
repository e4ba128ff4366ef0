"""Sampling-free training's dataset statistics for a built model: count, cache, apply.

Before training, every head whose config asks for `bias_init=dataset` or
`class_adaptive_thresh=true` gets its `AssignmentCounts` (`hardmine.models.priors`): its
classification bias is set to the optimal prior and its class-adaptive score thresholds are
stored in the head (a buffer, so checkpoints carry them to `eval` and `predict`).

Counting touches every annotation at every training scale, so the counts are cached as JSON under
`cache_dir()`, one file per fingerprint: a SHA-256 of the annotations (ids, sizes, boxes, labels,
ignore regions, proposals) and of everything that changes the labelling (the `model` config
section, the head's thresholds and matching options). Any change to either is a new fingerprint,
so a stale cache is never used. The run folder gets a copy (`dataset_priors.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from torch import Tensor, nn

from hardmine.config import Config
from hardmine.data.records import DatasetIndex
from hardmine.errors import DataError
from hardmine.models.priors import AnchorGrid, AssignmentCounts, HeadProbe, count_assignments

#: Bump when the counting changes, so caches written by older code are not reused.
COUNTING_VERSION = 2  # 2: several min sizes have proportional caps (random shapes)
#: File the applied statistics are copied to in the run folder.
PRIORS_FILE = "dataset_priors.json"


def cache_dir() -> Path:
    """$HARDMINE_CACHE_DIR, else $XDG_CACHE_HOME/hardmine, else ~/.cache/hardmine; then /priors."""
    root = os.environ.get("HARDMINE_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "hardmine")
    return Path(root) / "priors"


def _head_sections(cfg: Config) -> dict[str, object]:
    """Config section of each head of the configured detector, by head name."""
    if cfg.model.arch == "retinanet":
        return {"dense": cfg.dense_head}
    sections: dict[str, object] = {"roi": cfg.roi_head}
    if cfg.model.arch == "faster_rcnn":
        sections["rpn"] = cfg.rpn
    return sections


def heads_needing_priors(cfg: Config) -> list[str]:
    """Heads whose config uses dataset statistics (bias_init=dataset or class-adaptive thresholds)."""
    return [
        name
        for name, section in _head_sections(cfg).items()
        if getattr(section, "bias_init", "default") == "dataset"
        or getattr(section, "class_adaptive_thresh", False)
    ]


def _probe(model: nn.Module, head: str) -> HeadProbe:
    """How `head` of `model` labels candidates (the same anchors, thresholds and options)."""
    if head == "dense":
        grid = AnchorGrid(model.backbone, model.anchor_generator)
        return HeadProbe(grid, model.head.sampler.thresholds, low_quality=model.head.low_quality_matches)
    if head == "rpn":
        grid = AnchorGrid(model.backbone, model.rpn.anchor_generator)
        return HeadProbe(grid, model.rpn.sampler.thresholds, low_quality=True, class_agnostic=True)
    roi = model.roi_head
    # Faster R-CNN: before training the RPN's proposals are its anchors with near-uniform scores, so
    # the anchors stand in for the RoIs. Fast R-CNN: the proposal files are the RoIs.
    grid = AnchorGrid(model.backbone, model.rpn.anchor_generator) if model.rpn is not None else None
    return HeadProbe(grid, roi.sampler.thresholds, add_gt=roi.add_gt_as_proposals)


def fingerprint(index: DatasetIndex, cfg: Config, head: str, probe: HeadProbe, proposals: dict | None) -> str:
    """SHA-256 of the annotations and of everything that decides how `head` labels candidates."""
    digest = hashlib.sha256()
    setting = {
        "version": COUNTING_VERSION,
        "head": head,
        "model": cfg.to_dict()["model"],
        "thresholds": [probe.thresholds.fg, probe.thresholds.bg_lo, probe.thresholds.bg_hi],
        "low_quality": probe.low_quality,
        "add_gt": probe.add_gt,
        "class_agnostic": probe.class_agnostic,
        "num_classes": index.num_classes,
    }
    digest.update(json.dumps(setting, sort_keys=True).encode())
    for r in index.records:
        digest.update(f"{r.image_id}:{r.width}x{r.height}".encode())
        for array in (r.boxes, r.labels, r.ignore_boxes):
            digest.update(array.tobytes())
        if proposals is not None and probe.anchors is None and r.image_id in proposals:
            digest.update(proposals[r.image_id].numpy().tobytes())
    return digest.hexdigest()


def load_or_count(
    model: nn.Module, cfg: Config, index: DatasetIndex, head: str, proposals: dict[int, Tensor] | None = None
) -> tuple[AssignmentCounts, Path, bool]:
    """`head`'s counts over `index`: (counts, cache file, whether it came from the cache)."""
    probe = _probe(model, head)
    path = cache_dir() / f"{head}-{fingerprint(index, cfg, head, probe, proposals)}.json"
    if path.is_file():
        try:
            return AssignmentCounts.from_dict(json.loads(path.read_text())["counts"]), path, True
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            print(f"dataset priors: ignoring unreadable cache {path}; counting again", file=sys.stderr)
    counts = count_assignments(
        index.records,
        probe,
        index.num_classes,
        cfg.model.min_size,
        cfg.model.max_size,
        proposals=proposals,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"head": head, "source": str(index.source), "counts": counts.to_dict()}))
    os.replace(tmp, path)
    return counts, path, False


def apply_dataset_priors(
    model: nn.Module,
    cfg: Config,
    index: DatasetIndex,
    proposals: dict[int, Tensor] | None = None,
    run_dir: Path | None = None,
) -> dict[str, dict[str, object]]:
    """Set the bias and thresholds of every head that asks for them; returns what was applied.

    With `run_dir`, the same summary is written to `run_dir/dataset_priors.json`.
    """
    summary: dict[str, dict[str, object]] = {}
    heads = model.heads
    for name in heads_needing_priors(cfg):
        counts, path, cached = load_or_count(model, cfg, index, name, proposals)
        try:
            counts.check(name)
        except ValueError as exc:
            raise DataError(f"dataset priors of {index.source}: {exc}") from None
        section = _head_sections(cfg)[name]
        applied = heads[name].apply_priors(
            counts,
            bias=getattr(section, "bias_init", "default") == "dataset",
            thresholds=getattr(section, "class_adaptive_thresh", False),
        )
        summary[name] = {
            "counts": counts.to_dict(),
            "fg_ratio": counts.fg_ratio,
            "cache": str(path),
            **applied,
        }
        print(
            f"dataset priors ({name}): {counts.num_fg} fg of {counts.num_assigned} candidates "
            f"(N_f/N = {counts.fg_ratio:.3g}){' [cached]' if cached else ''}",
            file=sys.stderr,
        )
    if run_dir is not None and summary:
        (Path(run_dir) / PRIORS_FILE).write_text(json.dumps(summary, indent=2))
    return summary
