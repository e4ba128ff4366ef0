"""Learning-rate schedule values at known iterations, and the optimizer's parameter groups."""

import math

import pytest
import torch
from torch import nn
from torch.optim import SGD

from hardmine.config import SolverConfig
from hardmine.engine.schedule import build_optimizer, build_scheduler, current_lr


def lr_at(solver: SolverConfig, iterations: list[int]) -> list[float]:
    """The learning rates `build_scheduler` gives at `iterations` (ascending), stepped as the trainer does."""
    optimizer = SGD([nn.Parameter(torch.zeros(1))], lr=solver.lr)
    scheduler = build_scheduler(optimizer, solver)
    out, it = [], 0
    for target in iterations:
        while it < target:
            optimizer.step()
            scheduler.step()
            it += 1
        out.append(current_lr(optimizer))
    return out


def test_warmup_then_cosine():
    s = SolverConfig(lr=0.1, max_iter=110, warmup_iters=10, warmup_factor=0.1, schedule="cosine")
    lrs = lr_at(s, [0, 5, 10, 60, 110])
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[1] == pytest.approx(0.1 * (0.1 + 0.9 * 5 / 10))
    assert lrs[2] == pytest.approx(0.1)
    assert lrs[3] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 50 / 100)))
    assert lrs[4] == pytest.approx(0.0, abs=1e-12)


def test_warmup_then_steps_at_absolute_iterations():
    s = SolverConfig(
        lr=0.1, max_iter=100, warmup_iters=10, warmup_factor=0.5, schedule="step", steps=[50, 80], gamma=0.1
    )
    assert lr_at(s, [0, 10, 49, 50, 79, 80, 99]) == pytest.approx([0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_constant_without_warmup():
    s = SolverConfig(lr=0.3, max_iter=10, warmup_iters=0, schedule="constant")
    assert lr_at(s, [0, 9]) == pytest.approx([0.3, 0.3])


def test_no_weight_decay_on_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    opt = build_optimizer(model, SolverConfig(weight_decay=1e-4))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4
