"""Stage 2: Views Knowledge Distillation from a frozen multi-view teacher into a student."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from vkd_torchreid import losses as L
from vkd_torchreid.engine.base import EngineOptions, VKDEngineBase
from vkd_torchreid.engine.callbacks import Callback
from vkd_torchreid.engine.evaluator import Evaluator
from vkd_torchreid.models.student import freeze_teacher


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """The ``vkd`` section of the config that the training step uses (:meth:`from_config`)."""

    student_frames: int  # M
    tau: float
    alpha: float  # KD weight
    beta: float  # distance-preservation weight
    logits_loss: str  # 'kl' or 'mse'
    teacher_bn: str  # 'batch': batch statistics, running stats untouched; 'eval'

    @classmethod
    def from_config(cls, cfg: Any) -> DistillOptions:
        v = cfg.vkd
        return cls(student_frames=v.student_frames, tau=v.tau, alpha=v.alpha, beta=v.beta,
                   logits_loss=v.logits_loss, teacher_bn=v.teacher_bn)


class VKDEngine(VKDEngineBase):
    """The student sees M of the teacher's N frames of each item.

    Loss = CE(student) + TR(student) + alpha * KD(student || teacher) + beta * DP, every term
    logged under its own name. The teacher is neither registered (never saved, never
    optimised) nor touched by training: it runs under ``torch.inference_mode``.
    """

    stage = "student"

    def __init__(self, datamanager: Any, student: nn.Module, teacher: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, options: EngineOptions,
                 distill: DistillOptions, evaluator: Optional[Evaluator] = None,
                 generation: int = 0, callbacks: Optional[Sequence[Callback]] = None) -> None:
        super().__init__(datamanager, student, optimizer, scheduler, options, evaluator,
                         generation, callbacks)
        t_classes = getattr(teacher, "num_classes", None)
        s_classes = getattr(student, "num_classes", None)
        if t_classes != s_classes:
            raise ValueError(f"teacher has {t_classes} classes but the student has {s_classes}: "
                             "both must be trained on the same identities")
        self.distill = distill
        # Kept out of self.__dict__-based registration on purpose: only 'model' is saved.
        self.teacher = freeze_teacher(self._place(teacher), distill.teacher_bn)

    def set_model_mode(self, mode: str = "train", names: Any = None) -> None:
        super().set_model_mode(mode, names)
        freeze_teacher(self.teacher, self.distill.teacher_bn)

    @property
    def uses_teacher(self) -> bool:
        """False for the paper's control (alpha = beta = 0): the teacher is never run."""
        return self.distill.alpha > 0 or self.distill.beta > 0

    def forward_train(self, imgs: torch.Tensor) -> Dict[str, torch.Tensor]:
        b, n = imgs.shape[:2]
        out: Dict[str, torch.Tensor] = {}
        if self.uses_teacher:
            with torch.inference_mode():
                t_emb, t_logits = self.teacher.forward_features(imgs)
            # Inference tensors cannot enter autograd: plain copies are the (constant) targets.
            out = {"t_emb": t_emb.clone(), "t_logits": t_logits.clone()}
        m = self.distill.student_frames
        pick = torch.rand(b, n, device=imgs.device).argsort(dim=1)[:, :m]
        student_imgs = self._format(imgs[torch.arange(b, device=imgs.device)[:, None], pick])
        s_emb, s_logits = self.model.forward_features(student_imgs)
        return {"emb": s_emb, "logits": s_logits, **out}

    def compute_losses(self, outputs: Dict[str, torch.Tensor],
                       pids: torch.Tensor) -> Dict[str, torch.Tensor]:
        o, d = self.options, self.distill
        ce = L.cross_entropy(outputs["logits"], pids, label_smooth=o.label_smooth)
        tr = L.triplet_loss(outputs["emb"], pids, margin=o.triplet_margin)
        if not self.uses_teacher:  # the control: the student's own losses only
            return {"loss_ce": ce, "loss_tr": tr, "loss": o.weight_x * ce + o.weight_t * tr}
        if d.logits_loss == "kl":
            kd = L.kd_loss(outputs["logits"], outputs["t_logits"], tau=d.tau)
        else:
            kd = L.logits_mse_loss(outputs["logits"], outputs["t_logits"])
        dp = L.distance_preservation_loss(outputs["emb"], outputs["t_emb"])
        total = o.weight_x * ce + o.weight_t * tr + d.alpha * kd + d.beta * dp
        return {"loss_ce": ce, "loss_tr": tr, "loss_kd": kd, "loss_dp": dp, "loss": total}
