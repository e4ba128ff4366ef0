"""Sampling-free dataset statistics for a built model: applied, cached by fingerprint, checkpointed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hardmine.config import load_config
from hardmine.data.sources import resolve_split
from hardmine.engine import dataset_priors, training
from hardmine.engine.checkpoint import load_checkpoint
from hardmine.engine.dataset_priors import (
    PRIORS_FILE,
    apply_dataset_priors,
    heads_needing_priors,
    load_or_count,
)
from hardmine.errors import DataError
from hardmine.models.build import build_model
from hardmine.models.priors import sigmoid_prior_bias


def for_preset(fast_overrides: list[str]) -> list[str]:
    """The fast overrides without the RoI sampler's budget: the presets keep their own samplers."""
    return [o for o in fast_overrides if not o.startswith("roi_head.sampler.")]


def setup(fast_overrides: list[str], preset: str = "retinanet_sampling_free", *extra: str):
    cfg = load_config(f"configs/{preset}.yaml", [*for_preset(fast_overrides), *extra])
    index = resolve_split(cfg.data, "train")
    return cfg, index, build_model(cfg, index.num_classes)


def test_heads_that_need_statistics(fast_overrides):
    assert heads_needing_priors(load_config(None, fast_overrides)) == []
    assert heads_needing_priors(load_config("configs/retinanet_sampling_free.yaml")) == ["dense"]
    assert heads_needing_priors(load_config("configs/faster_rcnn_sampling_free.yaml")) == ["roi", "rpn"]
    only_thresholds = load_config("configs/retinanet_tiny.yaml", ["dense_head.class_adaptive_thresh=true"])
    assert heads_needing_priors(only_thresholds) == ["dense"]


def test_bias_and_thresholds_are_set_and_written_to_the_run(fast_overrides, tmp_path):
    cfg, index, model = setup(fast_overrides)
    summary = apply_dataset_priors(model, cfg, index, run_dir=tmp_path)
    counts = summary["dense"]["counts"]
    fg_ratio = counts["num_fg"] / (counts["num_fg"] + counts["num_bg"])
    bias = model.head.classification.cls_logits.bias
    torch.testing.assert_close(bias, torch.full_like(bias, sigmoid_prior_bias(fg_ratio / index.num_classes)))
    gt = torch.tensor(counts["gt_per_class"], dtype=torch.float64)
    assert sum(counts["gt_per_class"]) == sum(len(r.labels) for r in index.records)
    torch.testing.assert_close(model.head.class_score_thresh, (fg_ratio * gt / gt.sum()).float())
    assert json.loads((tmp_path / PRIORS_FILE).read_text()) == summary


def test_counts_are_cached_and_a_changed_dataset_or_threshold_is_counted_again(fast_overrides, monkeypatch):
    cfg, index, model = setup(fast_overrides)
    first, path, cached = load_or_count(model, cfg, index, "dense")
    assert path.is_file() and path.parent.parent == Path(dataset_priors.cache_dir()).parent

    def must_not_count(*args, **kwargs):
        raise AssertionError("counted although the cache matches")

    monkeypatch.setattr(dataset_priors, "count_assignments", must_not_count)
    again, same_path, cached = load_or_count(model, cfg, index, "dense")
    assert cached and again == first and same_path == path
    monkeypatch.undo()

    with_boxes = next(r for r in index.records if len(r.boxes))
    with_boxes.boxes = with_boxes.boxes + 1.0  # boxes move: new fingerprint
    _, moved_path, cached = load_or_count(model, cfg, index, "dense")
    assert not cached and moved_path != path
    cfg2, _, model2 = setup(fast_overrides, "retinanet_sampling_free", "dense_head.fg_iou=0.6")
    _, stricter_path, cached = load_or_count(model2, cfg2, index, "dense")
    assert not cached and stricter_path not in (path, moved_path)


def test_an_unreadable_cache_is_counted_again(fast_overrides, capsys):
    cfg, index, model = setup(fast_overrides)
    counts, path, _ = load_or_count(model, cfg, index, "dense")
    path.write_text("{not json")
    again, _, cached = load_or_count(model, cfg, index, "dense")
    assert not cached and again == counts
    assert "ignoring unreadable cache" in capsys.readouterr().err


def test_a_training_set_without_foreground_is_a_clear_error(fast_overrides):
    cfg, index, model = setup(fast_overrides, "retinanet_sampling_free", "dense_head.fg_iou=1.0")
    model.head.low_quality_matches = False
    with pytest.raises(DataError, match="no candidate reaches the foreground IoU"):
        apply_dataset_priors(model, cfg, index)


def test_sampling_free_training_checkpoints_the_thresholds_for_evaluation(fast_overrides):
    cfg = load_config(
        "configs/faster_rcnn_sampling_free.yaml",
        [*for_preset(fast_overrides), "solver.max_iter=2", "rpn.post_nms_top_n_test=20"],
    )
    result = training.train(cfg)
    out = Path(cfg.output_dir)
    summary = json.loads((out / PRIORS_FILE).read_text())
    assert set(summary) == {"rpn", "roi"}
    state = load_checkpoint(out / "model_final.pt")["model"]
    torch.testing.assert_close(
        state["roi_head.class_score_thresh"], torch.tensor(summary["roi"]["class_score_thresh"])
    )
    assert result.metrics is not None  # evaluation ran with the class-adaptive thresholds
