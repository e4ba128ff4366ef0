"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), sigmoid and softmax.

`sigmoid_focal_loss` takes and returns what `torchvision.ops.sigmoid_focal_loss` does, but runs as
one `torch.autograd.Function` with a closed-form gradient, streamed over the tensor in chunks: the
chunk temporaries are reused and stay in cache, and no full-size intermediate is kept for backward
(`benchmarks/loss_speed.py` measures the gain over torchvision).

With p = sigmoid(x), target t, q = 1 - p_t = p (1 - t) + (1 - p) t, ce = softplus(x) - t x (the BCE
with logits) and alpha_t = alpha t + (1 - alpha) (1 - t), the loss is

    L = alpha_t * ce * q ** gamma

and, using d ce/dx = p - t and d q/dx = p (1 - p) (1 - 2 t),

    dL/dx = alpha_t * [(p - t) q ** gamma + gamma ce p (1 - p) (1 - 2 t) q ** (gamma - 1)].

Both are linear in t wherever t appears, so soft targets give exactly torchvision's formula too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

#: Elements per chunk on the CPU. Below ATen's parallel grain size (32768 elements) every op of a
#: chunk runs on one thread with no OpenMP barrier (which costs milliseconds when other processes
#: compete for the cores), and the ten chunk buffers (1.2 MiB in float32) stay in cache.
CPU_CHUNK = 31 * 1024
#: Elements per chunk on accelerators: few kernel launches, bounded temporaries.
DEVICE_CHUNK = 1 << 20
#: Smallest positive normal float32; keeps q ** (gamma - 1) finite when gamma < 1 and q underflows.
_TINY = torch.finfo(torch.float32).tiny
_LOG2_E = 1.0 / math.log(2.0)
REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    """Raise ValueError unless `reduction` is one of none / mean / sum."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _focal_chunk(
    x: Tensor, t: Tensor, alpha: float, gamma: float, buf: list[Tensor], grad_scale: Tensor | None
) -> Tensor:
    """Loss of one chunk, or with `grad_scale` (the incoming gradient) its gradient; a view of `buf[0]`.

    x, t and the 8 buffers have the same length and the compute dtype. Every step writes into a
    buffer (`out=` or in place), so a chunk allocates nothing. Only ops that ATen runs on one thread
    at this size are used: exp, log, log1p and logsigmoid parallelise from 2048 elements (an OpenMP
    barrier per chunk, slow when other processes load the cores); softplus is serial but over 2x
    slower than the exp2 + xlogy route below.
    """
    result, b1, b2, b3, b4, b5, b6, b7 = buf
    nx = torch.neg(x, out=b1)
    # softplus(-|x|) = log1p(e) with e = exp(-|x|) = 2 ** (-|x| log2(e)): u = 1 + e rounds, and
    # (e - (u - 1)) / u adds back what the rounding lost (u - 1 is exact), so it stays accurate
    # where e is tiny; xlogy(1, u) is log(u).
    e = torch.minimum(x, nx, out=b2).mul_(_LOG2_E).exp2_()
    u = torch.add(e, 1.0, out=b3)
    lost = torch.sub(u, 1.0, out=b4)
    lost = torch.sub(e, lost, out=b4).div_(u)
    softplus_neg_abs = torch.xlogy(1.0, u, out=b2).add_(lost)
    # BCE with logits: max(x, 0) - t x + softplus(-|x|); exact at t = 0 and t = 1 for any x.
    ce = torch.clamp_min(x, 0.0, out=b3).addcmul_(t, x, value=-1.0).add_(softplus_neg_abs)
    p = torch.sigmoid(x, out=b2)
    r = nx.sigmoid_()  # 1 - p without cancellation
    q = torch.lerp(p, r, t, out=b4)  # 1 - p_t, exact at t = 0 and t = 1
    modulator = torch.pow(q, gamma, out=b5)
    alpha_t = torch.mul(t, 2.0 * alpha - 1.0, out=b6).add_(1.0 - alpha) if alpha >= 0 else None
    if grad_scale is None:
        value = torch.mul(ce, modulator, out=result)
    else:
        # p - t, as p (1 - t) - (1 - p) t: exact at t = 0 and t = 1
        value = torch.lerp(p, torch.neg(r, out=b7), t, out=result).mul_(modulator)
        if gamma != 0:
            slope = r.mul_(p)  # p (1 - p) = dp/dx
            slope.addcmul_(slope, t, value=-2.0).mul_(ce)  # ce dq/dx
            slope.mul_(torch.clamp_min(q, _TINY, out=b7).pow_(gamma - 1.0))
            value.add_(slope, alpha=gamma)
        value.mul_(grad_scale)
    if alpha_t is not None:
        value.mul_(alpha_t)
    return value


def _stream(
    inputs: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str, grad_output: Tensor | None
) -> Tensor:
    """Run `_focal_chunk` over the flattened tensors: the (reduced) loss, or the gradient w.r.t. inputs."""
    compute = torch.promote_types(inputs.dtype, torch.float32)
    x_all, t_all = inputs.reshape(-1), targets.reshape(-1)
    numel = x_all.numel()
    step = CPU_CHUNK if inputs.device.type == "cpu" else DEVICE_CHUNK
    bounds = [(start, min(start + step, numel)) for start in range(0, numel, step)]
    width = bounds[0][1] if bounds else 0
    buf = list(torch.empty((10, width), dtype=compute, device=inputs.device).unbind())
    x_buf, t_buf = buf[8], buf[9]
    elementwise = grad_output is not None or reduction == "none"
    result = torch.empty_like(x_all) if elementwise else x_all.new_empty(len(bounds), dtype=compute)
    if grad_output is None:
        scale = None
    elif reduction == "none":
        scale = grad_output.reshape(-1)
    else:
        scale = grad_output.to(compute) / numel if reduction == "mean" else grad_output.to(compute)
    for i, (start, stop) in enumerate(bounds):
        size = stop - start
        x, t = x_all[start:stop], t_all[start:stop]
        if x.dtype != compute:
            x = x_buf[:size].copy_(x)
        if t.dtype != compute:
            t = t_buf[:size].copy_(t)
        chunk_scale = scale[start:stop] if scale is not None and scale.dim() else scale
        value = _focal_chunk(x, t, alpha, gamma, [b[:size] for b in buf[:8]], chunk_scale)
        if elementwise:
            result[start:stop] = value
        else:
            torch.sum(value, dim=0, out=result[i])
    if elementwise:
        return result.view(inputs.shape)
    total = result.sum()
    return (total / numel if reduction == "mean" else total).to(inputs.dtype)


class _SigmoidFocal(torch.autograd.Function):
    """Chunked sigmoid focal loss with its closed-form gradient.

    Saved for backward: the inputs and targets only (free, the caller holds them anyway); backward
    recomputes the chunk pipeline. Computing dL/dx in the forward pass and saving it is about 1.3x
    faster for this loss alone (measured on the CPU), but it keeps a full-size tensor alive from the
    loss to its backward, i.e. across the training step's memory peak (end of forward, all
    activations saved), while recomputing adds nothing there; the leaner choice wins. The targets
    get no gradient (None): they are labels, not parameters.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, inputs: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str
    ) -> Tensor:
        ctx.save_for_backward(inputs, targets)
        ctx.params = (alpha, gamma, reduction)
        return _stream(inputs, targets, alpha, gamma, reduction, None)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        inputs, targets = ctx.saved_tensors
        grad = _stream(inputs, targets, *ctx.params, grad_output) if ctx.needs_input_grad[0] else None
        return grad, None, None, None, None


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Sigmoid focal loss with the signature and results of `torchvision.ops.sigmoid_focal_loss`.

    inputs: logits of any shape (float32, float64, bfloat16 or float16; computed in float32 or
    float64, returned in the input dtype); targets: same shape, 0/1 (or soft) labels, any dtype.
    alpha in [0, 1] balances positives vs negatives, -1 turns the balancing off; gamma >= 0 down-weights
    easy examples; reduction: none / mean / sum (mean and sum never build the elementwise tensor).
    No gradient flows to `targets`.
    """
    if not (0 <= alpha <= 1) and alpha != -1:
        raise ValueError(f"alpha must be in [0, 1], or -1 to turn the balancing off; got {alpha}")
    check_reduction(reduction)
    if targets.shape != inputs.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal inputs shape {tuple(inputs.shape)}"
        )
    return _SigmoidFocal.apply(inputs, targets, float(alpha), float(gamma), reduction)


def softmax_focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float | Tensor | None = None,
    gamma: float = 2.0,
    reduction: str = "none",
    ignore_index: int = -100,
) -> Tensor:
    """Softmax focal loss of [N, C] logits and [N] class indices: -alpha_y (1 - p_y) ** gamma log p_y.

    alpha: None (no balancing), a float (alpha for foreground labels >= 1, 1 - alpha for the
    background label 0, as in the RoI heads here) or a [C] tensor of per-class factors. Samples whose
    target is `ignore_index` get loss 0 and do not count in "mean", which divides by the number of
    the other samples (0 when there are none). gamma = 0 with alpha None is `F.cross_entropy`.
    Computed in float32 (float64 stays float64), returned in the logits' dtype.
    """
    check_reduction(reduction)
    compute = torch.promote_types(logits.dtype, torch.float32)
    valid = target != ignore_index
    labels = torch.where(valid, target, 0)
    log_p = F.log_softmax(logits.to(compute), dim=1).gather(1, labels[:, None]).squeeze(1)
    loss = -log_p
    if gamma != 0:
        one_minus_p = torch.clamp_min(-torch.expm1(log_p), _TINY)  # accurate where p is close to 1
        loss = loss * one_minus_p.pow(gamma)
    if isinstance(alpha, Tensor):
        loss = loss * alpha.to(compute)[labels]
    elif alpha is not None:
        loss = loss * torch.where(labels > 0, alpha, 1.0 - alpha)
    loss = torch.where(valid, loss, 0.0)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / valid.sum().clamp_min(1)
    return loss.to(logits.dtype)
