"""End to end: train + evaluate, logs and diagnostics, exact resume, checkpoint reload."""

import csv
import json
import signal
from pathlib import Path

import pytest
import torch

from hardmine.cli import main
from hardmine.config import load_config
from hardmine.engine import trainer
from hardmine.engine.checkpoint import load_checkpoint
from hardmine.engine.evaluate import METRIC_KEYS
from hardmine.errors import CheckpointError, HardmineError, TrainingInterrupted


def test_train_then_eval_writes_metrics_logs_and_checkpoints(fast_overrides, tmp_path, capsys):
    cfg = load_config(None, [*fast_overrides, "solver.max_iter=4", "train.checkpoint_period=2"])
    result = trainer.train(cfg)
    out = Path(cfg.output_dir)
    assert result.iterations == 4 and result.metrics is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics) and metrics["iterations"] == 4
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "lr", "loss_roi_cls", "roi/num_fg", "roi/num_bg", "roi/fg_loss_share", "rpn/num_fg"):
        assert key in rows[0]
    assert float(rows[0]["roi/num_fg"]) + float(rows[0]["roi/num_bg"]) <= 2 * 32
    assert (out / "model_final.pt").is_file() and (out / "config.yaml").is_file()
    assert any((out / "tensorboard").iterdir())

    # `hardmine eval` on the final checkpoint reproduces the end-of-training metrics.
    assert main(["eval", str(out / "model_final.pt"), "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {k: again[k] for k in METRIC_KEYS} == {k: metrics[k] for k in METRIC_KEYS}
    assert "AP50" in capsys.readouterr().out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_gives_the_weights_of_an_uninterrupted_run(fast_overrides, tmp_path, monkeypatch):
    base = [*fast_overrides, "solver.max_iter=6", "train.checkpoint_period=2", "train.eval_at_end=false"]
    full = load_config(None, [*base, f"output_dir={tmp_path / 'full'}"])
    trainer.train(full)

    cut = load_config(None, [*base, f"output_dir={tmp_path / 'cut'}"])
    real_step = torch.optim.SGD.step
    calls = {"n": 0}

    def interrupting_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C during the 3rd iteration: it completes, then the run stops
            signal.raise_signal(signal.SIGINT)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", interrupting_step)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT after iteration 3"):
        trainer.train(cut)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")["iteration"] == 3
    trainer.train(cut, resume=True)

    a, b = _weights(tmp_path / "full" / "model_final.pt"), _weights(tmp_path / "cut" / "model_final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = list(csv.DictReader((tmp_path / "cut" / "log.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_changed_config(fast_overrides):
    cfg = load_config(None, [*fast_overrides, "solver.max_iter=2", "train.eval_at_end=false"])
    trainer.train(cfg)
    changed = load_config(
        None, [*fast_overrides, "solver.max_iter=2", "solver.lr=0.5", "train.eval_at_end=false"]
    )
    with pytest.raises(CheckpointError, match="solver.lr: checkpoint 0.01, now 0.5"):
        trainer.train(changed, resume=True)


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_checkpoint_reload_gives_identical_predictions(arch, fast_overrides, tmp_path):
    from hardmine.cli import _load_trained
    from hardmine.data.sources import resolve_split
    from hardmine.engine.checkpoint import save_checkpoint
    from hardmine.engine.inference import predict_dataset
    from hardmine.models.build import build_model

    cfg = load_config(
        None,
        [*fast_overrides, f"model.arch={arch}", "roi_head.score_thresh=0.0", "dense_head.score_thresh=0.0"],
    )
    index = resolve_split(cfg.data, "val")
    torch.manual_seed(0)
    model = build_model(cfg, index.num_classes)
    for p in model.parameters():  # move away from the init so every weight matters
        p.data.add_(torch.randn_like(p) * 0.01)
    before = predict_dataset(model, index, torch.device("cpu"))
    categories = [{"id": c.id, "name": c.name, "label": c.label} for c in index.categories]
    path = save_checkpoint(
        tmp_path / "m.pt", {"model": model.state_dict(), "config": cfg.to_dict(), "categories": categories}
    )
    _, reloaded, _, device = _load_trained(str(path), [])
    after = predict_dataset(reloaded, index, device)
    assert before.keys() == after.keys()
    assert sum(p["boxes"].shape[0] for p in before.values()) > 0
    for image_id in before:
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(before[image_id][key], after[image_id][key])


def test_bf16_autocast_on_cpu_and_fp16_refused(fast_overrides):
    cfg = load_config(
        None, [*fast_overrides, "solver.max_iter=2", "solver.amp=bf16", "train.eval_at_end=false"]
    )
    result = trainer.train(cfg)
    assert result.iterations == 2 and result.skipped_steps == 0
    rows = list(csv.DictReader((Path(cfg.output_dir) / "log.csv").open()))
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    if not torch.cuda.is_available():
        fp16 = load_config(
            None, [*fast_overrides, "solver.max_iter=1", "solver.amp=fp16", "train.device=cpu"]
        )
        with pytest.raises(HardmineError, match="fp16 needs a CUDA device"):
            trainer.train(fp16)


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_one_training_step_of_each_detector_changes_the_weights(arch, fast_overrides):
    cfg = load_config(
        None, [*fast_overrides, f"model.arch={arch}", "solver.max_iter=1", "train.eval_at_end=false"]
    )
    trainer.train(cfg)
    trained = _weights(Path(cfg.output_dir) / "model_final.pt")
    from hardmine.models.build import build_model

    torch.manual_seed(cfg.train.seed)
    initial = build_model(cfg, 5).state_dict()
    changed = [
        k for k in initial if initial[k].is_floating_point() and not torch.equal(initial[k], trained[k])
    ]
    assert any(k.startswith("backbone.") for k in changed)
    heads = ("roi_head.", "rpn.") if arch == "faster_rcnn" else ("head.",)
    for prefix in heads:
        assert any(k.startswith(prefix) for k in changed), prefix


def test_voc_data_gets_voc_metrics_too(tmp_path):
    from hardmine.data.records import Category, DatasetIndex, ImageRecord

    record = ImageRecord(image_id=0, file_name="a.png", width=10, height=10)
    categories = [Category(id=1, name="a", label=1)]
    cfg = load_config(None, [])
    for source, expect_voc in ((tmp_path / "x.json", False), (tmp_path / "ImageSets/Main/val.txt", True)):
        index = DatasetIndex([record], categories, tmp_path, source)
        metrics = trainer.compute_metrics(
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


def test_ohem_sampler_statistics_are_logged(fast_overrides):
    cfg = load_config(
        None,
        [
            *fast_overrides,
            "roi_head.sampler=ohem",
            "roi_head.sampler.batch_size_per_image=8",
            "solver.max_iter=1",
            "train.eval_at_end=false",
        ],
    )
    trainer.train(cfg)
    (row,) = list(csv.DictReader((Path(cfg.output_dir) / "log.csv").open()))
    assert float(row["roi/sampler/num_selected"]) == float(row["roi/num_fg"]) + float(row["roi/num_bg"]) <= 16
    assert float(row["roi/sampler/mean_loss_selected"]) >= float(row["roi/sampler/mean_loss_all"])
    assert "roi/sampler/num_removed_by_nms" in row and "rpn/sampler/num_removed_by_nms" not in row
