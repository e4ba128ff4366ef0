"""Optimizer and learning-rate schedule: SGD, linear warmup, then cosine, step or constant.

Built from `torch.optim.lr_scheduler` (LinearLR, CosineAnnealingLR, MultiStepLR, ConstantLR,
chained by SequentialLR) and stepped once per iteration.
"""

from __future__ import annotations

from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

from hardmine.config import SolverConfig

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(model: nn.Module, solver: SolverConfig) -> Optimizer:
    """SGD with momentum; weight decay on weights only (not on biases or normalisation layers)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, _NORM_TYPES) or name == "bias":
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [
        {"params": decay, "weight_decay": solver.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return SGD([g for g in groups if g["params"]], lr=solver.lr, momentum=solver.momentum)


def build_scheduler(optimizer: Optimizer, solver: SolverConfig) -> LRScheduler:
    """Per-iteration schedule: `warmup_iters` of linear warmup from `warmup_factor`, then decay.

    Cosine decays to 0 at `max_iter`; step multiplies by `gamma` at each of `steps` (absolute
    iterations); constant keeps the peak rate.
    """
    warmup = min(solver.warmup_iters, solver.max_iter)
    rest = max(solver.max_iter - warmup, 1)
    if solver.schedule == "cosine":
        decay: LRScheduler = CosineAnnealingLR(optimizer, T_max=rest, eta_min=0.0)
    elif solver.schedule == "step":
        decay = MultiStepLR(
            optimizer, milestones=[max(s - warmup, 0) for s in solver.steps], gamma=solver.gamma
        )
    else:
        decay = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return decay
    warm = LinearLR(optimizer, start_factor=solver.warmup_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [warm, decay], milestones=[warmup])


def steps_for_budget(solver: SolverConfig, max_iter: int) -> list[int]:
    """`solver.steps` moved to the same fractions of `max_iter` as they take of `solver.max_iter`,
    so that a preset's step schedule keeps its shape under a longer or shorter budget."""
    return [round(step * max_iter / solver.max_iter) for step in solver.steps]


def current_lr(optimizer: Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
