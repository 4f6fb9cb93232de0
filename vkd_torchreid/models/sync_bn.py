"""Synchronised BatchNorm that also runs on CPU (gloo), for distributed training.

``nn.SyncBatchNorm`` refuses CPU tensors, so a CPU run under ``torch.distributed`` (gloo)
would normalise every rank's share of the batch with its own statistics. :class:`DistBatchNorm`
all-reduces, in one call, each channel's sum, sum of squares and count, and normalises with the
global batch's mean and biased variance; its gradient flows through the all-reduce (whose
backward all-reduces the gradient), so the result equals one BatchNorm over the whole batch,
also when ranks hold different batch sizes. Outside a distributed run (or with world size 1),
and in eval mode with running statistics, it is exactly ``F.batch_norm``.

Statistics are float32 sums of ``x - shift`` (one local sample as the shift), combined into
sums of ``x`` and ``x^2`` and all-reduced in float64, so ``E[x^2] - E[x]^2`` does not cancel
when a channel's mean is much larger than its spread. bf16/fp16 inputs (autocast) are
normalised in float32 and returned in their own dtype.

:func:`convert_sync_batchnorm` swaps a model's BatchNorm layers: ``nn.SyncBatchNorm`` on CUDA,
:class:`DistBatchNorm` elsewhere.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)

__all__ = ["DistBatchNorm", "convert_sync_batchnorm"]


def _world_size(group: Optional[dist.ProcessGroup]) -> int:
    """The size of ``group`` (None: the default group), 1 when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _all_reduce_sum(tensor: Tensor, group: Optional[dist.ProcessGroup]) -> Tensor:
    """Sum of ``tensor`` over the ranks; differentiable when grad is enabled."""
    if not torch.is_grad_enabled():  # also inference mode; ``tensor`` is ours to overwrite
        dist.all_reduce(tensor, group=group)
        return tensor
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated in favour of a non-differentiable collective
        warnings.filterwarnings("ignore", message=r".*nn\.functional\.all_reduce is deprecated",
                                category=FutureWarning)
        return all_reduce(tensor, group=dist.group.WORLD if group is None else group)


class DistBatchNorm(_BatchNorm):
    """BatchNorm over inputs ``[N, C, *]`` (any layout, channels_last too) whose batch
    statistics span all ranks of a process group; usable for BatchNorm1d/2d/3d.

    Args: those of ``nn.BatchNorm2d``, plus ``process_group`` (None: the default group).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Optional[dist.ProcessGroup] = None, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        batch_stats = self.training or not self.track_running_stats
        if not batch_stats or _world_size(self.process_group) == 1:
            return super().forward(input)  # F.batch_norm, running stats updated like torch's

        c, dim = input.shape[1], input.dim()
        dims, shape = [0, *range(2, dim)], [1, c] + [1] * (dim - 2)
        x = input if input.dtype == torch.float64 else input.float()  # float32 at least
        # Sums of x - shift (one local sample, so float32 sums do not cancel when a channel's
        # mean dwarfs its spread), turned into sums of x and x^2 in float64 (no float64 on MPS).
        acc = torch.float32 if input.device.type == "mps" else torch.float64
        shift = x[(0, slice(None)) + (0,) * (dim - 2)] if input.numel() else x.new_zeros(c)
        shift = shift.detach()
        centred = x - shift.view(shape)
        s1, s2 = centred.sum(dims).to(acc), (centred * centred).sum(dims).to(acc)
        shift, count = shift.to(acc), torch.full_like(s1, input.numel() // c)
        stats = _all_reduce_sum(
            torch.cat([s1 + count * shift, s2 + (2 * s1 + count * shift) * shift, count]),
            self.process_group)
        total, total_sq, n = stats.split(c)
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_min(0)

        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, n)

        # x - mean as centred - (mean - shift): exact for x near the shift, unlike x - mean
        ct = x.dtype
        out = (centred - (mean - shift).to(ct).view(shape)) * (
            torch.rsqrt(var + self.eps).to(ct).view(shape))
        if self.weight is not None:
            out = out * self.weight.to(ct).view(shape) + self.bias.to(ct).view(shape)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        """``running = (1 - f) * running + f * stat`` with torch's factor ``f`` (momentum, or
        1 / batches for ``momentum=None``) and the variance unbiased by the global count."""
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * n / (n - 1).clamp_min(1)
        for running, stat in ((self.running_mean, mean), (self.running_var, unbiased)):
            running.copy_(factor * stat.to(running.dtype) + (1 - factor) * running)


def convert_sync_batchnorm(module: nn.Module, device_type: str,
                           process_group: Optional[dist.ProcessGroup] = None) -> nn.Module:
    """``module`` with synchronised BatchNorm layers, the (possibly new) root returned.

    On ``"cuda"``: ``nn.SyncBatchNorm.convert_sync_batchnorm``. Otherwise every ``_BatchNorm``
    that is not a :class:`DistBatchNorm` becomes one sharing its parameters and buffers (the
    same objects, so optimisers and ``requires_grad`` are kept) and its training flag.
    """
    if device_type.split(":")[0] == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    converted = [0]
    root = _convert(module, process_group, converted)
    logger.debug("DistBatchNorm replaced %d BatchNorm layers", converted[0])
    return root


def _convert(module: nn.Module, process_group: Optional[dist.ProcessGroup],
             converted: List[int]) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, DistBatchNorm):
        out = DistBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
        converted[0] += 1
    for name, child in module.named_children():
        out.add_module(name, _convert(child, process_group, converted))
    return out
