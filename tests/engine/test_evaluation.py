"""Evaluating a model: the metric set eval.metric asks for; the evaluation history file."""

import torch

from hardmine.config import load_config
from hardmine.engine import evaluation
from hardmine.engine.evaluation import read_eval_history, write_eval_history


def test_voc_data_gets_voc_metrics_too(tmp_path):
    from hardmine.data.records import Category, DatasetIndex, ImageRecord

    record = ImageRecord(image_id=0, file_name="a.png", width=10, height=10)
    categories = [Category(id=1, name="a", label=1)]
    cfg = load_config(None, [])
    for source, expect_voc in ((tmp_path / "x.json", False), (tmp_path / "ImageSets/Main/val.txt", True)):
        index = DatasetIndex([record], categories, tmp_path, source)
        metrics = evaluation.compute_metrics(
            cfg,
            index,
            {
                0: {
                    "boxes": torch.zeros(0, 4),
                    "scores": torch.zeros(0),
                    "labels": torch.zeros(0, dtype=torch.long),
                }
            },
        )
        assert ("VOC07_mAP" in metrics) is expect_voc and "AP" in metrics


def test_the_evaluation_history_round_trips(tmp_path):
    entries = [{"iteration": 10, "AP": 0.125, "AP50": 0.5}, {"iteration": 20, "AP": 0.25, "AP50": 0.75}]
    path = write_eval_history(tmp_path / "eval_history.json", entries)
    assert read_eval_history(path) == entries and not list(tmp_path.glob(".*.tmp"))
