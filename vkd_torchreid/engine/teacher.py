"""Stage 1: the teacher, trained Video-To-Video on sets of N frames of one tracklet."""
from __future__ import annotations

from typing import Dict

import torch

from vkd_torchreid import losses as L
from vkd_torchreid.data.batch import Batch
from vkd_torchreid.engine.base import VKDEngineBase


class TeacherEngine(VKDEngineBase):
    """Cross-entropy + batch-hard triplet (soft margin) on the set embedding.

    Batches are ``img`` ``[B, N, C, H, W]``: N frames of one tracklet per item; the set
    embedding is the mean of the per-frame pooled features, the logits the mean of the
    per-frame logits (docs/ARCHITECTURE.md, "the method").
    """

    stage = "teacher"

    def forward_train(self, imgs: torch.Tensor, batch: Batch) -> Dict[str, torch.Tensor]:
        emb, logits = self.train_forward(imgs)
        return {"emb": emb, "logits": logits}

    def compute_losses(self, outputs: Dict[str, torch.Tensor],
                       pids: torch.Tensor) -> Dict[str, torch.Tensor]:
        o = self.options
        ce = L.cross_entropy(outputs["logits"], pids, label_smooth=o.label_smooth)
        emb, all_pids = self.global_batch(outputs["emb"], pids)
        tr = L.triplet_loss(emb, all_pids, margin=o.triplet_margin)
        return {"loss_ce": ce, "loss_tr": tr, "loss": o.weight_x * ce + o.weight_t * tr}
