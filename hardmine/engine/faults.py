"""Non-finite training steps: find a NaN/Inf loss or gradient, skip the step, stop after K in a row.

`guarded_step` replaces `loss.backward(); clip; optimizer.step()`: it checks the loss before the
backward pass and the gradient norm after it (unscaled first under a `GradScaler`), and only
updates the weights when both are finite. A skipped step leaves the parameters and the optimizer
untouched; `BufferSnapshot` lets the caller undo what the forward pass wrote into buffers
(BatchNorm statistics, loss EMAs), so a skipped step changes nothing at all.

`NonFiniteSteps` counts skipped steps, reports each with its iteration and image ids, and raises
`TrainingDiverged` after `limit` consecutive ones, before the caller writes another checkpoint.
Under fp16 a `GradScaler` overflow (non-finite gradients while the loss scale is above 1) is the
scaler's normal way to find its scale: it is skipped and counted but does not count towards the
limit, which only real non-finite values (the loss, or gradients at a scale of 1 or less) reach.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from torch.optim import Optimizer

from hardmine.distributed import any_process
from hardmine.errors import TrainingDiverged

#: Names shown in a message before "(+N more)".
_SHOWN = 4


@dataclass(frozen=True)
class StepOutcome:
    """What `guarded_step` did: `ok` (weights updated) or why not (`reason`), and whether a skip
    counts towards the consecutive limit (`counts`: False for a GradScaler overflow)."""

    ok: bool
    reason: str = ""
    counts: bool = True


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def nonfinite_losses(losses: dict[str, Tensor]) -> list[str]:
    """`name=value` of each loss term that is NaN or infinite."""
    return [f"{k}={float(v.detach()):g}" for k, v in losses.items() if not bool(torch.isfinite(v).all())]


def nonfinite_gradients(model: nn.Module) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or an Inf."""
    return [
        name
        for name, p in model.named_parameters()
        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]


def guarded_step(
    model: nn.Module,
    optimizer: Optimizer,
    losses: dict[str, Tensor],
    clip_grad_norm: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
) -> StepOutcome:
    """One optimizer step on the sum of `losses`, skipped when the loss or a gradient is non-finite.

    The gradient norm is that of all gradients (after unscaling with a `scaler`); with
    `clip_grad_norm` > 0 gradients are clipped to it, exactly as `clip_grad_norm_`. Gradients are
    zeroed before the backward pass and again after a skipped step.

    In a distributed run (`model` wrapped in DistributedDataParallel by the caller, which passes the
    plain model here) every process must decide alike, or the others would wait forever for the
    gradient all-reduce of a skipped backward pass: a non-finite loss on any process skips the step
    on all of them. The gradient check needs no vote, since the gradients are already averaged over
    the processes (a NaN on one is a NaN on all).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = sum(losses.values())
    assert isinstance(loss, Tensor)
    finite = bool(torch.isfinite(loss))
    if any_process(not finite):
        if finite:
            return StepOutcome(False, "non-finite loss on another process")
        bad = nonfinite_losses(losses) or [f"total={float(loss):g}"]
        return StepOutcome(False, f"non-finite loss ({_names(bad)})")
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    if not bool(torch.isfinite(norm)):
        reason = f"non-finite gradient ({_names(nonfinite_gradients(model))})"
        counts = True
        if scaler is not None:
            scale = scaler.get_scale()
            scaler.update()  # the scaler saw the overflow at unscale_: lowers the scale
            counts = scale <= 1.0
            if not counts:
                reason += f", fp16 loss scale {scale:g} lowered"
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(False, reason, counts)
    if clip_grad_norm > 0:
        clip_grads_with_norm_(params, clip_grad_norm, norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return StepOutcome(True)


class BufferSnapshot:
    """A copy of a module's buffers, to undo what a skipped step's forward pass wrote into them."""

    def __init__(self, model: nn.Module) -> None:
        self._saved = [(b, b.detach().clone()) for b in model.buffers()]

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in self._saved:
                buffer.copy_(saved)


class NonFiniteSteps:
    """Counts skipped steps and stops training after `limit` consecutive ones (0: never).

    `report(text)` prints each skip; `stop_message()` (called when stopping) says which checkpoint
    is left. The counts are part of the checkpoint (`state_dict`), so a resumed run counts on."""

    def __init__(
        self,
        limit: int,
        report: Callable[[str], None],
        stop_message: Callable[[], str] = lambda: "",
    ) -> None:
        self.limit = limit
        self.report = report
        self.stop_message = stop_message
        self.skipped = 0
        self.consecutive = 0

    def update(self, iteration: int, outcome: StepOutcome, image_ids: Iterable[int]) -> None:
        """Record the outcome of the step of `iteration` (1-based); raise `TrainingDiverged` when
        this skip is the `limit`-th in a row."""
        if outcome.ok:
            self.consecutive = 0
            return
        self.skipped += 1
        if outcome.counts:
            self.consecutive += 1
        ids = list(image_ids)
        self.report(f"iteration {iteration}: {outcome.reason}; step skipped (image ids {ids})")
        if self.limit and self.consecutive >= self.limit:
            raise TrainingDiverged(
                f"iteration {iteration}: {self.consecutive} consecutive steps with a non-finite loss or "
                f"gradient (train.max_nonfinite_steps={self.limit}), the last: {outcome.reason} on image "
                f"ids {ids}. {self.stop_message()}"
            )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every floating-point tensor holds only finite values (one host sync)."""
    checks = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True
