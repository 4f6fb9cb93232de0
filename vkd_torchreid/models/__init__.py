"""VKD networks: backbones, BAM, the BNNeck head, students, and weight loading.

``MODEL_BUILDERS`` holds torchreid-style builders; ``vkd_torchreid`` registers them so that
``torchreid.models.build_model("vkd_resnet50", num_classes, loss=..., pretrained=...)`` works.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict

from vkd_torchreid.models.backbones import ARCHS, get_spec
from vkd_torchreid.models.bam import BAM
from vkd_torchreid.models.pretrained import imagenet_file, imagenet_url
from vkd_torchreid.models.reference import reference_arch, reference_to_ours
from vkd_torchreid.models.student import TEACHER_BN_MODES, build_student, freeze_teacher
from vkd_torchreid.models.vkdnet import VKDNet
from vkd_torchreid.models.weights import (
    NetworkCheckpoint,
    load_network_state,
    load_weights,
    read_network,
)
from vkd_torchreid.utils.logs import one_line

__all__ = ["ARCHS", "BAM", "MODEL_BUILDERS", "TEACHER_BN_MODES", "NetworkCheckpoint", "VKDNet",
           "build_model", "build_student", "freeze_teacher", "imagenet_file", "imagenet_url",
           "load_weights", "network_from_weights", "read_network", "reference_arch",
           "reference_to_ours"]


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


def network_from_weights(path: str, arch: str, last_stride: int = 1, trust: bool = False,
                         require_arch: bool = False) -> VKDNet:
    """The network of ``path`` (ours, torchreid's, or a reference experiment folder), built
    and loaded, in eval mode, for inference (export, feature extraction).

    Its class count is the weights' (their ``classifier.weight``); its architecture the one
    they declare, else ``arch``. With ``require_arch`` a declared architecture other than
    ``arch`` is an error.

    Raises:
        FileNotFoundError: ``path`` does not exist (named).
        ValueError: another architecture than ``arch`` (``require_arch``; both named), no
            classifier to take the class count from, or weights that do not fit.
        CheckpointError: an unreadable checkpoint.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights not found: {path}")
    ckpt = read_network(path, trust=trust)
    if require_arch and ckpt.arch is not None and ckpt.arch != arch:
        raise ValueError(f"{path} holds a {ckpt.arch} network but the config's model.name is "
                         f"{arch} (pass model.name {ckpt.arch})")
    if ckpt.num_classes is None:
        raise ValueError(f"{path} holds no classifier.weight: cannot tell its class count")
    name = ckpt.arch or arch
    model = build_model(name, ckpt.num_classes, pretrained=False, loss="triplet",
                        last_stride=last_stride)
    try:
        load_network_state(model, ckpt)
    except ValueError as exc:  # its message names the file, the architecture and the keys
        if ckpt.arch:
            raise
        raise ValueError(f"{path} declares no architecture and does not fit the config's "
                         f"model.name {name}: {one_line(exc)}") from exc
    return model.eval()
