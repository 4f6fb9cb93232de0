"""Optimiser and learning-rate scheduler of a run, built by torchreid from the config."""
from __future__ import annotations

from typing import Any, Optional, Tuple

from torch import nn

from vkd_torchreid.compat import build_lr_scheduler, build_optimizer


def build_optim(cfg: Any, model: nn.Module, lr: Optional[float] = None) -> Tuple[Any, Any]:
    """torchreid's optimizer and LR scheduler for ``model`` (``lr`` overrides train.lr)."""
    t = cfg.train
    optimizer = build_optimizer(model, optim=t.optim, lr=t.lr if lr is None else lr,
                                weight_decay=t.weight_decay, adam_beta1=t.adam_beta1,
                                adam_beta2=t.adam_beta2)
    stepsize: Any = list(t.stepsize)
    if t.lr_scheduler == "single_step":
        stepsize = stepsize[0] if stepsize else 1
    scheduler = build_lr_scheduler(optimizer, lr_scheduler=t.lr_scheduler, stepsize=stepsize,
                                   gamma=t.gamma, max_epoch=t.max_epoch)
    return optimizer, scheduler


def generation_lr(cfg: Any, generation: int) -> float:
    """The learning rate of a generation: ``max(lr * decay^g, floor)``, as the reference."""
    if generation == 0:
        return cfg.train.lr
    return max(cfg.train.lr * cfg.vkd.generation_lr_decay ** generation,
               cfg.vkd.generation_lr_floor)
