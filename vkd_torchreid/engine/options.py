"""How both engines train: :class:`EngineOptions` (the config's ``train`` and ``loss``
sections that the training step uses)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How both engines train (values from the config: :meth:`from_config`)."""

    use_gpu: bool
    amp: str  # '', 'bf16', 'fp16'
    channels_last: bool
    label_smooth: float
    triplet_margin: Any  # 'soft' or a float
    weight_x: float
    weight_t: float
    dist_gather: bool  # under torchrun: losses over the global batch
    sync_bn: bool  # under torchrun: BatchNorm statistics over the global batch

    @classmethod
    def from_config(cls, cfg: Any) -> EngineOptions:
        margin: Any = "soft" if cfg.loss.triplet.soft_margin else float(cfg.loss.triplet.margin)
        return cls(
            use_gpu=bool(cfg.use_gpu) and torch.cuda.is_available(), amp=cfg.train.amp,
            channels_last=cfg.train.channels_last,
            label_smooth=cfg.loss.softmax.epsilon if cfg.loss.softmax.label_smooth else 0.0,
            triplet_margin=margin, weight_x=cfg.loss.triplet.weight_x,
            weight_t=cfg.loss.triplet.weight_t, dist_gather=cfg.train.dist_gather,
            sync_bn=cfg.train.sync_bn)
