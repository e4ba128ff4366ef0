"""Synchronized BatchNorm for distributed training (`model.sync_bn`).

BatchNorm in training normalises with the statistics of its batch; in a distributed run each
process only sees its own share (`data.batch_size` images), which is noisy for small per-process
batches. Synchronized BatchNorm computes mean and variance over the global batch instead.

On CUDA the layers become torch's `nn.SyncBatchNorm` (`convert_sync_batchnorm`). torch's
`SyncBatchNorm` refuses CPU tensors (its statistics kernels, `batch_norm_stats` and friends,
exist for CUDA only, and `DistributedDataParallel` refuses `SyncBatchNorm` layers in a CPU
module), so for CPU training (gloo) the `BatchNorm2d` layers (the only kind hardmine's models
have) become `CpuSyncBatchNorm` instead: a `BatchNorm2d` whose training forward sums the
per-channel statistics over the processes with an autograd-aware all-reduce, so that the backward
pass also sums the statistics' gradients over the processes, as torch's CUDA implementation does.
In evaluation and without a process group it is plain `BatchNorm2d`.

Frozen BatchNorm (`FrozenBatchNorm2d`, used by pretrained backbones) has no batch statistics and
is left alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hardmine.distributed import is_distributed


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) over `group` in the forward pass and, for the gradient, in the backward pass."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """`BatchNorm2d` whose training statistics cover every process (see the module docstring)."""

    #: the group the statistics are summed over (None: the default group)
    process_group: dist.ProcessGroup | None = None

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, group: dist.ProcessGroup | None = None) -> CpuSyncBatchNorm:
        """A synchronized layer that shares `bn`'s parameters and running statistics."""
        layer = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        layer.process_group = group
        if bn.affine:
            layer.weight, layer.bias = bn.weight, bn.bias
        layer.running_mean, layer.running_var = bn.running_mean, bn.running_var
        layer.num_batches_tracked = bn.num_batches_tracked
        layer.train(bn.training)
        return layer

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or not is_distributed():
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        x = input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / max(x.shape[1], 1)], dtype=x.dtype)
        totals = _SumOverProcesses.apply(torch.cat([x.sum(dims), count]), self.process_group)
        n = totals[-1].clamp_min(1.0)
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = _SumOverProcesses.apply((centred * centred).sum(dims), self.process_group) / n  # biased
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(input.dtype)


def _convert_cpu(module: nn.Module, group: dist.ProcessGroup | None) -> nn.Module:
    """`module` with every `BatchNorm2d` layer replaced by a `CpuSyncBatchNorm` summing over `group`."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        return CpuSyncBatchNorm.from_batchnorm(module, group)
    for name, child in module.named_children():
        converted = _convert_cpu(child, group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """The model with synchronized BatchNorm layers for training on `device`, and how many there are.

    CUDA: torch's `nn.SyncBatchNorm.convert_sync_batchnorm` (the default group, as usual with
    DDP); CPU: `CpuSyncBatchNorm` on a gloo group of its own, as a precaution: DDP launches its
    gradient all-reduces on the default group from autograd hooks whenever a bucket is ready, and
    on a separate group the BatchNorm collectives (always in one order: the backbone is a chain)
    match up whatever that schedule is. Must be called on every process (the group is created
    collectively). Parameters and running statistics are shared with the replaced layers; frozen
    BatchNorm stays as it is; 0 converted layers means the model had none that trains.
    """
    if device.type == "cpu":
        group = dist.new_group(backend="gloo") if is_distributed() else None
        model = _convert_cpu(model, group)
    else:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    synced = (nn.SyncBatchNorm, CpuSyncBatchNorm)
    return model, sum(isinstance(m, synced) for m in model.modules())
