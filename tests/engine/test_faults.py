"""Non-finite steps: the guarded optimizer step, buffer restore, the consecutive limit, and NaN
injection into real training runs (skipped and logged; K in a row stop with the checkpoint intact)."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hardmine.config import load_config
from hardmine.engine import trainer, training
from hardmine.engine.checkpoint import load_checkpoint
from hardmine.engine.faults import BufferSnapshot, NonFiniteSteps, StepOutcome, guarded_step
from hardmine.errors import TrainingDiverged


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def _losses(model: nn.Module, poison: str = "") -> dict[str, torch.Tensor]:
    out = model(torch.randn(5, 3)).mean()
    if poison == "loss":
        out = out * math.nan
    if poison == "grad":  # finite loss, NaN gradient: d sqrt(0 * w) / dw = 0 * inf
        out = out + torch.sqrt(model[2].weight.sum() * 0.0)
    return {"loss_a": out, "loss_b": torch.tensor(1.0)}


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def _equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not _equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_a_non_finite_step_changes_neither_weights_nor_optimizer(poison: str) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert guarded_step(model, optimizer, _losses(model)).ok  # momentum buffers now exist
    before = _state(model, optimizer)
    outcome = guarded_step(model, optimizer, _losses(model, poison), clip_grad_norm=1.0)
    assert not outcome.ok and outcome.counts
    if poison == "loss":
        assert outcome.reason == "non-finite loss (loss_a=nan)"
    else:
        assert outcome.reason == "non-finite gradient (2.weight)"
    after = _state(model, optimizer)
    assert _equal(before[1], after[1])
    for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(before[0][key], after[0][key]), key
    assert all(p.grad is None for p in model.parameters())


def test_clipping_is_that_of_clip_grad_norm() -> None:
    model, reference = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    torch.manual_seed(1)
    assert guarded_step(model, opt, {"l": model(torch.randn(5, 3)).pow(2).sum() * 100}, clip_grad_norm=0.5).ok
    torch.manual_seed(1)
    reference(torch.randn(5, 3)).pow(2).sum().mul(100).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    ref_opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_buffer_snapshot_undoes_batchnorm_statistics() -> None:
    model = _model().train()
    snapshot = BufferSnapshot(model)
    saved = copy.deepcopy(model[1].state_dict())
    model(torch.full((5, 3), math.nan))
    assert torch.isnan(model[1].running_mean).all()
    snapshot.restore()
    for key, value in saved.items():
        assert torch.equal(model[1].state_dict()[key], value), key


@pytest.mark.parametrize(("init_scale", "counts"), [(4.0, False), (1.0, True)])
def test_grad_scaler_overflow_counts_only_at_scale_one(init_scale: float, counts: bool) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    before = copy.deepcopy(model.state_dict())
    outcome = guarded_step(model, optimizer, _losses(model, "grad"), scaler=scaler)
    assert not outcome.ok and outcome.counts is counts
    assert scaler.get_scale() == init_scale / 2  # the scaler saw the overflow and backed off
    assert ("loss scale 4 lowered" in outcome.reason) is not counts
    assert all(torch.equal(before[k], p) for k, p in model.named_parameters())
    assert guarded_step(model, optimizer, _losses(model), scaler=scaler).ok


def test_consecutive_limit() -> None:
    said: list[str] = []
    steps = NonFiniteSteps(3, said.append, stop_message=lambda: "checkpoint kept.")
    bad, overflow, good = (
        StepOutcome(False, "non-finite loss (x=nan)"),
        StepOutcome(False, "o", False),
        StepOutcome(True),
    )
    for it, outcome in enumerate([bad, bad, good, bad, overflow, bad], start=1):
        steps.update(it, outcome, [it, 10 + it])
    assert steps.state_dict() == {"skipped": 5, "consecutive": 2}
    assert said[0] == "iteration 1: non-finite loss (x=nan); step skipped (image ids [1, 11])"
    with pytest.raises(TrainingDiverged) as info:
        steps.update(7, bad, [3])
    assert str(info.value) == (
        "iteration 7: 3 consecutive steps with a non-finite loss or gradient (train.max_nonfinite_steps=3), "
        "the last: non-finite loss (x=nan) on image ids [3]. checkpoint kept."
    )
    never = NonFiniteSteps(0, said.append)
    for it in range(20):
        never.update(it, bad, [])
    assert never.skipped == 20


def _inject(monkeypatch: pytest.MonkeyPatch, nan_loss: set[int], nan_grad: set[int]) -> None:
    """Make the model's training forward number `n` (1-based) return a NaN loss (n in `nan_loss`) or
    a finite loss with a NaN gradient (n in `nan_grad`)."""
    real_build = training.build_model

    def build(cfg, num_classes):
        model = real_build(cfg, num_classes)
        real_forward = model.forward
        calls = [0]

        def forward(images, targets=None, **kwargs):
            out = real_forward(images, targets, **kwargs)
            if model.training:
                calls[0] += 1
                key = next(iter(out))
                if calls[0] in nan_loss:
                    out[key] = out[key] * math.nan
                if calls[0] in nan_grad:
                    weight = next(model.parameters())
                    out[key] = out[key] + torch.sqrt(weight.sum() * 0.0)
            return out

        model.forward = forward
        return model

    monkeypatch.setattr(training, "build_model", build)


def test_nan_loss_and_gradient_steps_are_skipped_counted_and_logged(fast_overrides, monkeypatch, capsys):
    _inject(monkeypatch, nan_loss={2}, nan_grad={4})
    cfg = load_config(None, [*fast_overrides, "solver.max_iter=5", "train.eval_at_end=false"])
    result = training.train(cfg)
    assert result.iterations == 5 and result.skipped_steps == 2
    err = capsys.readouterr().err
    assert "iteration 2: non-finite loss (loss_" in err and "step skipped (image ids [" in err
    assert "iteration 4: non-finite gradient (backbone." in err
    rows = list(csv.DictReader((Path(cfg.output_dir) / "log.csv").open()))
    assert [float(r["skipped_steps"]) for r in rows] == [0, 1, 1, 2, 2]
    final = load_checkpoint(Path(cfg.output_dir) / "model_final.pt")
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
    assert final["faults"] == {"skipped": 2, "consecutive": 0}
    assert "2 non-finite steps skipped" in trainer.format_result(result)


def test_k_consecutive_non_finite_steps_stop_with_the_last_checkpoint_intact(fast_overrides, monkeypatch):
    _inject(monkeypatch, nan_loss=set(range(3, 100)), nan_grad=set())
    cfg = load_config(
        None,
        [
            *fast_overrides,
            "solver.max_iter=8",
            "train.checkpoint_period=2",
            "train.max_nonfinite_steps=2",
            "train.eval_at_end=false",
        ],
    )
    with pytest.raises(TrainingDiverged) as info:
        training.train(cfg)
    out = Path(cfg.output_dir)
    message = str(info.value)
    assert message.startswith("iteration 4: 2 consecutive steps with a non-finite loss or gradient")
    assert f"The last checkpoint, {out / 'checkpoint_last.pt'} (iteration 2), is kept as it was" in message
    kept = load_checkpoint(out / "checkpoint_last.pt")
    assert kept["iteration"] == 2 and not (out / "model_final.pt").exists()
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_non_finite_weights_are_never_checkpointed(fast_overrides, monkeypatch):
    real_step = torch.optim.SGD.step
    calls = [0]

    def corrupting_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 3:  # an update that overflows (as a huge learning rate would)
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(math.inf)
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", corrupting_step)
    cfg = load_config(
        None, [*fast_overrides, "solver.max_iter=6", "train.checkpoint_period=2", "train.eval_at_end=false"]
    )
    with pytest.raises(TrainingDiverged, match="iteration 4: the model holds non-finite weights"):
        training.train(cfg)
    assert load_checkpoint(Path(cfg.output_dir) / "checkpoint_last.pt")["iteration"] == 2
