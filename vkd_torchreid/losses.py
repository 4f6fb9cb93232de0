"""The VKD objective: cross-entropy, batch-hard triplet, logits distillation and distance
preservation (paper eq. 1-4).

All functions take float32 tensors (the engines cast model outputs before calling them) and
return a scalar tensor averaged over the batch.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

Margin = Union[str, float]


#: Values of ``vkd.logits_loss``: KL divergence of softened logits (the paper) or MSE.
LOGITS_LOSSES = ("kl", "mse")


def cross_entropy(logits: torch.Tensor, pids: torch.Tensor, label_smooth: float = 0.0) -> torch.Tensor:
    """Cross-entropy with optional label smoothing (torchreid's ``CrossEntropyLoss``).

    The target is ``(1 - eps) * onehot + eps / C``, averaged over the batch.
    """
    if not 0.0 <= label_smooth < 1.0:
        raise ValueError(f"label_smooth must be in [0, 1), got {label_smooth}")
    return F.cross_entropy(logits, pids.long(), label_smoothing=float(label_smooth))


def pairwise_squared_distances(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[B1, B2]`` squared Euclidean distances between the rows of ``x`` and ``y`` (default x).

    Computed from Gram matrices in float32 (autocast off) and clamped at zero.
    """
    y = x if y is None else y
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        xx = (x * x).sum(1, keepdim=True)
        yy = (y * y).sum(1, keepdim=True)
        d2 = xx + yy.t() - 2.0 * (x @ y.t())
    return d2.clamp_min(0.0)


def triplet_loss(emb: torch.Tensor, pids: torch.Tensor, margin: Margin = "soft") -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al.): hardest positive vs hardest negative per anchor.

    Distances are ``sqrt(d^2 + 1e-12)``. ``margin="soft"`` gives ``log(1 + exp(d_ap - d_an))``;
    a float gives the hinge ``max(0, d_ap - d_an + margin)``. An anchor without a positive
    uses ``d_ap = 0``. A batch of a single identity has no negative: with ``pids`` on the CPU
    that raises ValueError; on an accelerator the check would be a host-device synchronisation
    in the middle of the step, so the loss is NaN instead (never a silent zero), which the
    engines' non-finite check stops before any update.
    """
    if not (margin == "soft" or isinstance(margin, (int, float))):
        raise ValueError(f"margin must be 'soft' or a number, got {margin!r}")
    dist = (pairwise_squared_distances(emb) + 1e-12).sqrt()
    same = pids[:, None] == pids[None, :]
    if pids.device.type == "cpu" and bool(same.all()):
        raise ValueError("triplet_loss needs at least two identities in the batch")
    eye = torch.eye(len(pids), dtype=torch.bool, device=emb.device)
    d_ap = (dist * (same & ~eye)).max(dim=1).values
    d_an = dist.masked_fill(same, float("inf")).min(dim=1).values
    d_an = d_an.masked_fill(same.all(dim=1), float("nan"))  # no negative: see the docstring
    z = d_ap - d_an
    if margin == "soft":
        return F.softplus(z).mean()
    return F.relu(z + float(margin)).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 10.0) -> torch.Tensor:
    """Hinton's distillation term ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``.

    The divergence is summed over classes and averaged over the batch (paper eq. 3).
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
    return kl * tau * tau


def logits_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between logits (the paper's ablation in place of the KL term)."""
    return F.mse_loss(student_logits, teacher_logits)


def distance_preservation_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Distance preservation (paper eq. 4): ``0.5 * MSE`` between the ``[B, B]`` matrices of
    squared pairwise distances of the student's and the teacher's embeddings."""
    if student_emb.shape[0] != teacher_emb.shape[0]:
        raise ValueError(f"student and teacher batches differ: {student_emb.shape[0]} vs "
                         f"{teacher_emb.shape[0]}")
    d_s = pairwise_squared_distances(student_emb)
    d_t = pairwise_squared_distances(teacher_emb)
    return 0.5 * F.mse_loss(d_s, d_t)
