"""The VKD student: a re-initialised copy of the teacher, or another backbone.

Follows the reference's ``TriNet.reinit_layers(reinitl4=True)`` (aimagelab/VKD
``model/net.py``, called by ``tools/train_distill.py`` on a deepcopy of the teacher):

- ResNet (with or without BAM): ``layer4`` gets the ImageNet weights again;
- DenseNet-121: ``denseblock4`` gets the ImageNet weights again (the reference reloads
  ``features_layers[-2]``, i.e. denseblock4 only; ``norm5`` keeps the teacher's values);
- MobileNetV2: no backbone layer is touched, only the classifier;
- the whole classifier module is reset, i.e. the BNNeck BatchNorm (weight 1, bias 0,
  running statistics) and the Linear (normal, std 0.001). As in the reference, nothing is
  reset when the last block is not re-initialised.
"""
from __future__ import annotations

import copy
import logging

from torch import nn

from vkd_torchreid.models.backbones import get_spec
from vkd_torchreid.models.vkdnet import VKDNet

logger = logging.getLogger(__name__)

#: How the frozen teacher's BatchNorm behaves while it teaches (``vkd.teacher_bn``).
TEACHER_BN_MODES = ("batch", "eval")


def build_student(teacher: VKDNet, arch: str = "", reinit_last_block: bool = True,
                  pretrained: bool = True, pretrained_path: str = "") -> VKDNet:
    """The student of a VKD generation.

    Args:
        teacher: the (trained) teacher; left untouched.
        arch: the student's model name; empty or ``teacher.arch``: a copy of the teacher,
            otherwise a fresh ``arch`` model with ``teacher.num_classes`` classes
            (cross-distillation).
        reinit_last_block: re-initialise the last block (see the module docstring) and the
            classifier of the copy.
        pretrained: the last block (or the fresh model) from ImageNet weights; False: random
            init, the same scheme as a fresh model.
        pretrained_path: ImageNet weight file or folder (see
            :func:`vkd_torchreid.models.pretrained.imagenet_file`).

    Returns:
        The student, all parameters trainable except the BNNeck bias, BatchNorms tracking
        running statistics (a teacher in the reference's "teacher mode" has them off).

    Raises:
        ValueError: unknown ``arch``.
        FileNotFoundError: ImageNet weights needed but not on disk.
    """
    if arch and arch != teacher.arch:
        get_spec(arch)
        logger.info("cross-distillation: %s student of a %s teacher", arch, teacher.arch)
        return VKDNet(arch, teacher.num_classes, loss=teacher.loss, pretrained=pretrained,
                      pretrained_path=pretrained_path, last_stride=teacher.last_stride)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    student.bnneck.bias.requires_grad_(False)
    for m in student.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.track_running_stats = True
    if reinit_last_block:
        fresh = VKDNet(teacher.arch, teacher.num_classes, loss=teacher.loss,
                       pretrained=pretrained, pretrained_path=pretrained_path,
                       last_stride=teacher.last_stride)
        for prefix in student.last_block_names():
            name = prefix.rstrip(".")
            student.get_submodule(name).load_state_dict(fresh.get_submodule(name).state_dict())
        student.reset_head()
        logger.info("student %s: re-initialised %s and the classifier (%s)", student.arch,
                    student.last_block_names() or "no backbone block",
                    "ImageNet" if pretrained else "random init")
    student.train()
    return student


def freeze_teacher(teacher: nn.Module, bn_mode: str) -> nn.Module:
    """Freezes ``teacher`` for distillation: no gradients, fixed BatchNorm behaviour.

    ``bn_mode='batch'`` is the reference: train mode with ``track_running_stats=False`` on
    every BatchNorm, so batch statistics are used and the running ones never change.
    ``'eval'`` uses the running statistics.
    """
    teacher.requires_grad_(False)
    if bn_mode == "eval":
        return teacher.eval()
    if bn_mode not in TEACHER_BN_MODES:
        raise ValueError(f"vkd.teacher_bn={bn_mode!r}: expected one of {TEACHER_BN_MODES}")
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
    return teacher.train()
