"""VKD networks: backbones, BAM, the BNNeck head, students, and weight loading.

``MODEL_BUILDERS`` holds torchreid-style builders; ``vkd_torchreid`` registers them so that
``torchreid.models.build_model("vkd_resnet50", num_classes, loss=..., pretrained=...)`` works.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict

from vkd_torchreid.models.backbones import ARCHS, get_spec
from vkd_torchreid.models.bam import BAM
from vkd_torchreid.models.opener import (
    CheckpointMismatchError,
    load_weights,
    open_network,
    read_checkpoint,
)
from vkd_torchreid.models.pretrained import imagenet_file, imagenet_url
from vkd_torchreid.models.reference import reference_arch, reference_to_ours
from vkd_torchreid.models.student import TEACHER_BN_MODES, build_student, freeze_teacher
from vkd_torchreid.models.vkdnet import VKDNet
from vkd_torchreid.models.weights import NetworkCheckpoint, read_network

__all__ = ["ARCHS", "BAM", "MODEL_BUILDERS", "TEACHER_BN_MODES", "CheckpointMismatchError",
           "NetworkCheckpoint", "VKDNet", "build_model", "build_student", "freeze_teacher",
           "imagenet_file", "imagenet_url", "load_weights", "open_network", "read_checkpoint",
           "read_network", "reference_arch", "reference_to_ours"]


def _builder(arch: str, num_classes: int, loss: str = "softmax", pretrained: bool = True,
             use_gpu: bool = True, pretrained_path: str = "", last_stride: int = 1,
             **kwargs: Any) -> VKDNet:
    """torchreid-style builder; ``use_gpu`` and unknown kwargs are accepted and ignored (the
    engine places the model)."""
    return VKDNet(arch, num_classes, loss=loss, pretrained=pretrained,
                  pretrained_path=pretrained_path, last_stride=last_stride)


def _make_builder(arch: str) -> Callable[..., VKDNet]:
    fn = functools.partial(_builder, arch)
    functools.update_wrapper(fn, _builder)
    fn.__name__ = arch  # type: ignore[attr-defined]
    fn.__doc__ = f"Builds a {arch} :class:`VKDNet` (torchreid builder signature)."
    return fn


#: Model name -> builder ``(num_classes, loss="softmax", pretrained=True, use_gpu=True,
#: pretrained_path="", last_stride=1, **kwargs) -> VKDNet``.
MODEL_BUILDERS: Dict[str, Callable[..., VKDNet]] = {arch: _make_builder(arch) for arch in ARCHS}


def build_model(name: str, num_classes: int, loss: str = "triplet", pretrained: bool = True,
                use_gpu: bool = False, pretrained_path: str = "",
                last_stride: int = 1) -> VKDNet:
    """Builds one of our networks.

    Args:
        name: one of :data:`ARCHS`.
        num_classes: identities of the training set.
        loss: ``softmax`` or ``triplet`` (what a train-mode forward returns).
        pretrained: ImageNet init from weight files on disk.
        use_gpu: accepted for torchreid compatibility; the caller places the model.
        pretrained_path: ImageNet weight file or folder; empty: the torch hub cache.
        last_stride: stride of the last stage.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or loss.
        FileNotFoundError: ImageNet weights requested but not on disk.
    """
    get_spec(name)
    return MODEL_BUILDERS[name](num_classes, loss=loss, pretrained=pretrained, use_gpu=use_gpu,
                                pretrained_path=pretrained_path, last_stride=last_stride)
