"""The Trainer on a one-weight model (hand-computed steps, hooks, stops), then end to end: train +
evaluate, logs and diagnostics, exact resume, checkpoint reload."""

import csv
import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import ConstantLR

from hardmine.cli import main
from hardmine.config import load_config
from hardmine.distributed import ProcessContext
from hardmine.engine import training
from hardmine.engine.checkpoint import load_checkpoint
from hardmine.engine.coco_eval import METRIC_KEYS
from hardmine.engine.trainer import Hook, Stop, Trainer
from hardmine.errors import CheckpointError, HardmineError, TrainingInterrupted


class OneWeight(nn.Module):
    """loss = (w * mean(image))^2, so a step of SGD (lr 0.1) is w -= 0.2 * w * mean^2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0]))

    def forward(self, images, targets):
        return {"loss": (self.w * torch.stack(images).mean()).pow(2).sum()}


class Recorder(Hook):
    def __init__(self, events: list[str], stop_after: int = 0, fail_after: int = 0) -> None:
        self.events, self.stop_after, self.fail_after = events, stop_after, fail_after

    def before_train(self, trainer):
        self.events.append("before")

    def after_step(self, trainer):
        self.events.append(f"step {trainer.iteration} lr {trainer.last.lr:g}")
        if trainer.iteration == self.fail_after:
            raise RuntimeError("hook failed")
        if trainer.iteration == self.stop_after:
            trainer.request_stop(Stop("enough"))

    def after_train(self, trainer, result):
        self.events.append("after")

    def close(self):
        self.events.append("close")


def _one_weight_trainer(out: Path) -> Trainer:
    model = OneWeight()
    optimizer = SGD(model.parameters(), lr=0.1)
    run = ProcessContext(0, 0, 1, torch.device("cpu"))
    scheduler = ConstantLR(optimizer, factor=1.0, total_iters=0)
    return Trainer(model, optimizer, scheduler, run=run, out_dir=out, max_iter=3, batch_size=1)


#: Iteration t's batch: one 2x2 image of value t (1-based).
BATCHES = [([torch.full((1, 2, 2), float(t))], [{"image_id": torch.tensor(t)}]) for t in (1, 2, 3)]


def test_the_trainer_steps_calls_its_hooks_and_stops_with_a_checkpoint(tmp_path):
    events: list[str] = []
    full = _one_weight_trainer(tmp_path / "full")
    result = full.train(BATCHES, [Recorder(events)])
    # w: 1 -> 1 - 0.2 * 1 = 0.8 -> 0.8 - 0.2 * 0.8 * 4 = 0.16 -> 0.16 - 0.2 * 0.16 * 9 = -0.128
    assert full.model.w.item() == pytest.approx(-0.128)
    assert events == ["before", "step 1 lr 0.1", "step 2 lr 0.1", "step 3 lr 0.1", "close", "after"]
    assert result.iterations == 3 and not result.stopped
    assert load_checkpoint(tmp_path / "full" / "model_final.pt")["iteration"] == 3

    events.clear()
    stopped = _one_weight_trainer(tmp_path / "stopped")
    result = stopped.train(BATCHES, [Recorder(events, stop_after=2)])
    assert events == ["before", "step 1 lr 0.1", "step 2 lr 0.1", "close"]
    assert (result.iterations, result.stopped) == (2, "enough")
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoint_last.pt")
    assert saved["iteration"] == 2 and float(saved["model"]["w"]) == pytest.approx(0.16)
    assert not (tmp_path / "stopped" / "model_final.pt").exists()

    resumed = _one_weight_trainer(tmp_path / "stopped")
    resumed.load_state_dict(saved, tmp_path / "stopped" / "checkpoint_last.pt")
    resumed.train(BATCHES[2:])
    assert torch.equal(resumed.model.w, full.model.w)

    events.clear()
    with pytest.raises(RuntimeError, match="hook failed"):
        _one_weight_trainer(tmp_path / "failed").train(BATCHES, [Recorder(events, fail_after=1)])
    assert events == ["before", "step 1 lr 0.1", "close"]  # closed on errors too


def test_train_then_eval_writes_metrics_logs_and_checkpoints(fast_overrides, tmp_path, capsys):
    cfg = load_config(None, [*fast_overrides, "solver.max_iter=4", "train.checkpoint_period=2"])
    result = training.train(cfg)
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
    training.train(full)

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
        training.train(cut)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")["iteration"] == 3
    training.train(cut, resume=True)

    a, b = _weights(tmp_path / "full" / "model_final.pt"), _weights(tmp_path / "cut" / "model_final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = list(csv.DictReader((tmp_path / "cut" / "log.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_changed_config(fast_overrides):
    cfg = load_config(None, [*fast_overrides, "solver.max_iter=2", "train.eval_at_end=false"])
    training.train(cfg)
    changed = load_config(
        None, [*fast_overrides, "solver.max_iter=2", "solver.lr=0.5", "train.eval_at_end=false"]
    )
    with pytest.raises(CheckpointError, match="solver.lr: checkpoint 0.01, now 0.5"):
        training.train(changed, resume=True)


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_checkpoint_reload_gives_identical_predictions(arch, fast_overrides, tmp_path):
    from hardmine.data.sources import resolve_split
    from hardmine.engine.checkpoint import save_checkpoint
    from hardmine.engine.inference import load_trained, predict_dataset
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
    _, reloaded, _, device = load_trained(str(path), [])
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
    result = training.train(cfg)
    assert result.iterations == 2 and result.skipped_steps == 0
    rows = list(csv.DictReader((Path(cfg.output_dir) / "log.csv").open()))
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    if not torch.cuda.is_available():
        fp16 = load_config(
            None, [*fast_overrides, "solver.max_iter=1", "solver.amp=fp16", "train.device=cpu"]
        )
        with pytest.raises(HardmineError, match="fp16 needs a CUDA device"):
            training.train(fp16)


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_one_training_step_of_each_detector_changes_the_weights(arch, fast_overrides):
    cfg = load_config(
        None, [*fast_overrides, f"model.arch={arch}", "solver.max_iter=1", "train.eval_at_end=false"]
    )
    training.train(cfg)
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
    training.train(cfg)
    (row,) = list(csv.DictReader((Path(cfg.output_dir) / "log.csv").open()))
    assert float(row["roi/sampler/num_selected"]) == float(row["roi/num_fg"]) + float(row["roi/num_bg"]) <= 16
    assert float(row["roi/sampler/mean_loss_selected"]) >= float(row["roi/sampler/mean_loss_all"])
    assert "roi/sampler/num_removed_by_nms" in row and "rpn/sampler/num_removed_by_nms" not in row
