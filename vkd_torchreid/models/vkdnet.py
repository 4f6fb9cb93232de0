"""VKDNet: a backbone, global average pooling and a BNNeck classifier over sets of frames.

State-dict keys: ``backbone.*`` (see :mod:`vkd_torchreid.models.backbones`), ``bnneck.*``
(BatchNorm1d) and ``classifier.weight`` (bias-free Linear).
"""
from __future__ import annotations

import logging
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from vkd_torchreid.models.backbones import LAST_BLOCK, build_backbone, get_spec
from vkd_torchreid.models.pretrained import load_imagenet_state

logger = logging.getLogger(__name__)

LOSSES = ("softmax", "triplet")
#: Standard deviation of the classifier's normal init (reference ``weights_init_classifier``).
CLASSIFIER_STD = 0.001


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class VKDNet(nn.Module):
    """The re-ID network of VKD (the reference's ``TriNet``).

    Args:
        arch: model name, e.g. ``vkd_resnet50``.
        num_classes: identities of the training set.
        loss: ``softmax`` (train-mode forward returns logits) or ``triplet`` (returns
            ``(logits, emb)``), torchreid's convention.
        pretrained: ImageNet init of the backbone (files on disk only, see
            :mod:`vkd_torchreid.models.pretrained`); False: random init.
        pretrained_path: ImageNet weight file or folder; empty: the torch hub cache.
        last_stride: stride of the last stage (1 in VKD).

    Raises:
        ValueError: unknown ``arch`` or ``loss``.
        FileNotFoundError: ``pretrained`` and the ImageNet weights are not on disk.
    """

    def __init__(self, arch: str, num_classes: int, loss: str = "softmax",
                 pretrained: bool = True, pretrained_path: str = "",
                 last_stride: int = 1) -> None:
        super().__init__()
        spec = get_spec(arch)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.arch = arch
        self.family = spec.family
        self.num_classes = num_classes
        self.feature_dim = spec.feature_dim
        self.loss = loss
        self.last_stride = last_stride
        state, source = (load_imagenet_state(arch, pretrained_path) if pretrained
                         else (None, ""))
        self.backbone = build_backbone(arch, last_stride, state, source)
        self.bnneck = nn.BatchNorm1d(self.feature_dim)
        self.classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
        self.reset_head()

    def reset_head(self) -> None:
        """Re-initialises the BNNeck (weight 1, bias 0 and frozen, fresh running statistics)
        and the classifier (normal, std 0.001), as the reference's ``ClassificationLayer``."""
        self.bnneck.reset_parameters()
        self.bnneck.bias.requires_grad_(False)
        nn.init.normal_(self.classifier.weight, std=CLASSIFIER_STD)

    def last_block_names(self) -> List[str]:
        """Parameter-name prefixes of the last block a VKD student re-initialises:
        ``backbone.layer4.`` (ResNet), ``backbone.denseblock4.`` (DenseNet), none for
        MobileNetV2 (the reference re-initialises only its classifier)."""
        return [f"backbone.{name}." for name in LAST_BLOCK[self.family]]

    def head_names(self) -> List[str]:
        """Parameter-name prefixes of the BNNeck head."""
        return ["bnneck.", "classifier."]

    def _channels_last(self) -> bool:
        weight = next(p for p in self.backbone.parameters() if p.dim() == 4)
        return weight.is_contiguous(memory_format=torch.channels_last)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Set embeddings and logits.

        Args:
            x: ``[B, C, H, W]`` (one frame per set) or ``[B, V, C, H, W]`` (V frames per set).

        Returns:
            ``(emb, logits)``: ``emb [B, D]`` is the mean over the V frames of the pooled
            features (before the BNNeck); ``logits [B, num_classes]`` is the mean over frames
            of ``classifier(bnneck(f))``. Both float32 under autocast (float16/bfloat16
            results are upcast); a float64 model gives float64.
        """
        if x.dim() == 4:
            x = x.unsqueeze(1)
        if x.dim() != 5:
            raise ValueError(f"expected [B, C, H, W] or [B, V, C, H, W], got {tuple(x.shape)}")
        b, v = x.shape[:2]
        frames = x.reshape(b * v, *x.shape[2:])
        if self._channels_last():
            frames = frames.contiguous(memory_format=torch.channels_last)
        fmap = self.backbone(frames)  # [B*V, D, h, w]
        f = _full(F.adaptive_avg_pool2d(fmap, 1).flatten(1))  # [B*V, D]
        logits = _full(self.classifier(self.bnneck(f)))  # [B*V, num_classes]
        emb = f.view(b, v, -1).mean(dim=1)
        return emb, logits.view(b, v, -1).mean(dim=1)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """torchreid's interface.

        Args:
            x: ``[B, C, H, W]`` or ``[B, V, C, H, W]``.

        Returns:
            eval mode: ``emb [B, D]``; train mode: ``logits [B, num_classes]`` (softmax loss)
            or ``(logits, emb)`` (triplet loss).
        """
        emb, logits = self.forward_features(x)
        if not self.training:
            return emb
        return logits if self.loss == "softmax" else (logits, emb)

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, num_classes={self.num_classes}, "
                f"feature_dim={self.feature_dim}, loss={self.loss}")
