"""Stage 2: Views Knowledge Distillation from a frozen multi-view teacher into a student."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from vkd_torchreid import losses as L
from vkd_torchreid.data.batch import Batch
from vkd_torchreid.engine.base import EngineOptions, StopTraining, VKDEngineBase
from vkd_torchreid.engine.cache_embed import BuildInterrupted
from vkd_torchreid.engine.callbacks import Callback
from vkd_torchreid.engine.evaluator import Evaluator
from vkd_torchreid.engine.targets import TARGETS, LiveTeacherTargets, TeacherTargets
from vkd_torchreid.models.student import freeze_teacher
from vkd_torchreid.models.sync_bn import convert_sync_batchnorm
from vkd_torchreid.utils.device import send


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """The ``vkd`` section of the config that the training step uses (:meth:`from_config`)."""

    student_frames: int  # M
    tau: float
    alpha: float  # KD weight
    beta: float  # distance-preservation weight
    logits_loss: str  # 'kl' or 'mse'
    teacher_bn: str  # 'batch': batch statistics, running stats untouched; 'eval'
    #: Where the teacher's targets come from (:mod:`.targets`): 'live' (the teacher runs on
    #: the N frames) or 'cached' (``vkd.teacher_cache``, when the teacher is used at all).
    targets: str = "live"

    @classmethod
    def from_config(cls, cfg: Any) -> DistillOptions:
        v = cfg.vkd
        uses_teacher = v.alpha > 0 or v.beta > 0
        return cls(student_frames=v.student_frames, tau=v.tau, alpha=v.alpha, beta=v.beta,
                   logits_loss=v.logits_loss, teacher_bn=v.teacher_bn,
                   targets="cached" if v.teacher_cache and uses_teacher else "live")


class VKDEngine(VKDEngineBase):
    """The student sees M of the teacher's N frames of each item.

    Loss = CE(student) + TR(student) + alpha * KD(student || teacher) + beta * DP, every term
    logged under its own name. The teacher is neither registered (never saved, never
    optimised) nor touched by training: it runs under ``torch.inference_mode``.

    ``targets`` (default: live) give the teacher's targets (see :mod:`.targets`); they must be
    the kind ``distill.targets`` names. The training loader is the data manager's loader for
    the targets' row function (cached targets: the student's M frames and the cache rows).
    """

    stage = "student"

    def __init__(self, datamanager: Any, student: nn.Module, teacher: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, options: EngineOptions,
                 distill: DistillOptions, evaluator: Optional[Evaluator] = None,
                 generation: int = 0, callbacks: Optional[Sequence[Callback]] = None,
                 targets: Optional[TeacherTargets] = None) -> None:
        targets = targets if targets is not None else LiveTeacherTargets()
        if distill.targets not in TARGETS or targets.name != distill.targets:
            raise ValueError(f"DistillOptions.targets={distill.targets!r} but the engine was "
                             f"given {targets.name} teacher targets")
        super().__init__(datamanager, student, optimizer, scheduler, options, evaluator,
                         generation, callbacks)
        self.targets = targets
        if targets.rows is not None:
            self.train_loader = datamanager.train_loader_for(targets.rows)
        t_classes = getattr(teacher, "num_classes", None)
        s_classes = getattr(student, "num_classes", None)
        if t_classes != s_classes:
            raise ValueError(f"teacher has {t_classes} classes but the student has {s_classes}: "
                             "both must be trained on the same identities")
        self.distill = distill
        # Kept out of self.__dict__-based registration on purpose: only 'model' is saved.
        teacher = self._place(teacher)
        if self.dist.enabled and options.sync_bn and distill.teacher_bn == "batch":
            # batch statistics of the frozen teacher over the global batch as well
            teacher = convert_sync_batchnorm(teacher, self.device.type)
        self.teacher = freeze_teacher(teacher, distill.teacher_bn)

    def set_model_mode(self, mode: str = "train", names: Any = None) -> None:
        super().set_model_mode(mode, names)
        freeze_teacher(self.teacher, self.distill.teacher_bn)

    @property
    def uses_teacher(self) -> bool:
        """False for the paper's control (alpha = beta = 0): the teacher is never run."""
        return self.distill.alpha > 0 or self.distill.beta > 0

    def before_training(self) -> None:
        """Prepares the targets (cached: opens or builds the cache) when the teacher is used.

        Raises:
            StopTraining: a signal arrived during the cache build (which left nothing).
        """
        if self.uses_teacher:
            try:
                self.targets.prepare(self.teacher, self.device,
                                     stop=lambda: self._stop_signal is not None)
            except BuildInterrupted as exc:
                raise StopTraining(f"signal {self._stop_signal} during the teacher cache "
                                   "build; nothing was built or saved", save=False) from exc

    def teacher_targets(self, imgs: torch.Tensor, batch: Batch) -> Dict[str, torch.Tensor]:
        """The teacher's set embedding and logits of each item (constants for autograd), from
        the targets (see :mod:`.targets`)."""
        with torch.inference_mode():
            t_emb, t_logits = self.targets(self.teacher, imgs, batch)
        # Inference tensors cannot enter autograd: plain copies are the (constant) targets.
        return {"t_emb": t_emb.clone(), "t_logits": t_logits.clone()}

    def student_frames(self, imgs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The student's M frames of each item ``[B, M, C, H, W]``: the sampler's draw
        (``batch.student``), or a draw here for batches that do not carry one. With cached
        targets the loader decoded only those frames."""
        if self.targets.rows is not None:
            return imgs
        b, n = imgs.shape[:2]
        pick = batch.student
        if pick is None:
            pick = torch.rand(b, n).argsort(dim=1)[:, :self.distill.student_frames]
        pick = send(pick, imgs.device)  # no sync: the teacher's forward is queued
        return self._format(imgs[torch.arange(b, device=imgs.device)[:, None], pick])

    def forward_train(self, imgs: torch.Tensor, batch: Batch) -> Dict[str, torch.Tensor]:
        out = self.teacher_targets(imgs, batch) if self.uses_teacher else {}
        s_emb, s_logits = self.train_forward(self.student_frames(imgs, batch))
        return {"emb": s_emb, "logits": s_logits, **out}

    def compute_losses(self, outputs: Dict[str, torch.Tensor],
                       pids: torch.Tensor) -> Dict[str, torch.Tensor]:
        o, d = self.options, self.distill
        ce = L.cross_entropy(outputs["logits"], pids, label_smooth=o.label_smooth)
        # Under torchrun with train.dist_gather: the global batch (see VKDEngineBase).
        if self.uses_teacher:
            emb, t_emb, all_pids = self.global_batch(outputs["emb"], outputs["t_emb"], pids)
        else:
            emb, all_pids = self.global_batch(outputs["emb"], pids)
        tr = L.triplet_loss(emb, all_pids, margin=o.triplet_margin)
        if not self.uses_teacher:  # the control: the student's own losses only
            return {"loss_ce": ce, "loss_tr": tr, "loss": o.weight_x * ce + o.weight_t * tr}
        if d.logits_loss == "kl":
            kd = L.kd_loss(outputs["logits"], outputs["t_logits"], tau=d.tau)
        else:
            kd = L.logits_mse_loss(outputs["logits"], outputs["t_logits"])
        dp = L.distance_preservation_loss(emb, t_emb)
        total = o.weight_x * ce + o.weight_t * tr + d.alpha * kd + d.beta * dp
        return {"loss_ce": ce, "loss_tr": tr, "loss_kd": kd, "loss_dp": dp, "loss": total}
