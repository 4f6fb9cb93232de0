"""torchvision backbones modified as in the VKD reference (aimagelab/VKD ``model/net.py``).

Each backbone is an ``nn.Sequential`` of named stages so that state-dict keys stay readable:

- ResNet: ``conv1, bn1, relu, maxpool, layer1, [bam1], layer2, [bam2], layer3, [bam3], layer4``
  (torchvision's names; BAM after layers 1-3 for the ``*_bam`` variants). Last stride set on
  ``layer4[0]`` (conv2 of a Bottleneck / conv1 of a BasicBlock, and the downsample conv);
  ``layer4[-1].relu`` is an ``nn.Identity``: torchvision blocks share one ReLU module for all
  their activations, so the whole last block runs without ReLU, as in the reference.
- DenseNet-121: torchvision's ``densenet121().features`` (``conv0 ... denseblock4, norm5``),
  without the final ReLU torchvision applies in ``forward`` (the reference drops it too).
  ``last_stride`` does not apply (the reference ignores it).
- MobileNetV2: torchvision's ``mobilenet_v2().features`` (children ``0`` .. ``18``) with the
  depthwise conv of ``features[14]`` at ``last_stride`` and the ReLU6 of ``features[18]``
  replaced by an identity.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import torch
import torchvision
from torch import nn

from vkd_torchreid.models.bam import BAM

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """What we need to know about one backbone.

    Attributes:
        name: our model name (``vkd_resnet50``).
        family: ``resnet``, ``densenet`` or ``mobilenet``.
        tv_name: torchvision builder (``resnet50``).
        weights: torchvision weight enum holding the ImageNet weights (``ResNet50_Weights``).
        feature_dim: D, channels of the last feature map.
        reference: ``backbone_type`` of the reference implementation.
        bam: BAM after layer1, layer2 and layer3.
    """

    name: str
    family: str
    tv_name: str
    weights: str
    feature_dim: int
    reference: str
    bam: bool = False


_SPECS = [
    ArchSpec("vkd_resnet18", "resnet", "resnet18", "ResNet18_Weights", 512, "resnet18"),
    ArchSpec("vkd_resnet34", "resnet", "resnet34", "ResNet34_Weights", 512, "resnet34"),
    ArchSpec("vkd_resnet50", "resnet", "resnet50", "ResNet50_Weights", 2048, "resnet50"),
    ArchSpec("vkd_resnet101", "resnet", "resnet101", "ResNet101_Weights", 2048, "resnet101"),
    ArchSpec("vkd_resnet50_bam", "resnet", "resnet50", "ResNet50_Weights", 2048, "resnet50bam",
             bam=True),
    ArchSpec("vkd_resnet101_bam", "resnet", "resnet101", "ResNet101_Weights", 2048,
             "resnet101bam", bam=True),
    ArchSpec("vkd_densenet121", "densenet", "densenet121", "DenseNet121_Weights", 1024,
             "densenet121"),
    ArchSpec("vkd_mobilenetv2", "mobilenet", "mobilenet_v2", "MobileNet_V2_Weights", 1280,
             "mobilenet"),
]

#: Our model name -> its :class:`ArchSpec`.
SPECS: Dict[str, ArchSpec] = {s.name: s for s in _SPECS}
#: Our model names, in a stable order.
ARCHS: Tuple[str, ...] = tuple(SPECS)

#: Sub-module (of the backbone) that is the "last block" re-initialised for a VKD student
#: (the reference's ``reinit_layers``: ResNet layer4, DenseNet denseblock4, MobileNet none).
LAST_BLOCK = {"resnet": ("layer4",), "densenet": ("denseblock4",), "mobilenet": ()}
#: Index of the MobileNetV2 block whose depthwise conv takes the last stride, and of the
#: final 1x1 ConvBNReLU6 whose ReLU6 is removed (reference: features[14], features[18][2]).
MOBILENET_STRIDE_BLOCK = 14
MOBILENET_LAST_CONV = 18


def get_spec(arch: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``arch``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if arch not in SPECS:
        raise ValueError(f"unknown model {arch!r}; valid names: {', '.join(ARCHS)}")
    return SPECS[arch]


def torchvision_model(spec: ArchSpec) -> nn.Module:
    """The randomly initialised torchvision model of ``spec`` (never downloads)."""
    builder = getattr(torchvision.models, spec.tv_name)
    if spec.family == "resnet":
        return builder(weights=None, zero_init_residual=True)
    return builder(weights=None)


def _resnet_stages(resnet: nn.Module, spec: ArchSpec, last_stride: int) -> nn.Sequential:
    block = resnet.layer4[0]
    strided = block.conv2 if hasattr(block, "conv3") else block.conv1  # Bottleneck / Basic
    strided.stride = (last_stride, last_stride)
    block.downsample[0].stride = (last_stride, last_stride)
    resnet.layer4[-1].relu = nn.Identity()
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        (name, getattr(resnet, name)) for name in ("conv1", "bn1", "relu", "maxpool"))
    for i in range(1, 5):
        layer = getattr(resnet, f"layer{i}")
        stages[f"layer{i}"] = layer
        if spec.bam and i < 4:
            stages[f"bam{i}"] = BAM(layer[-1].bn3.num_features if hasattr(layer[-1], "bn3")
                                    else layer[-1].bn2.num_features)
    return nn.Sequential(stages)


def _mobilenet_stages(mobilenet: nn.Module, last_stride: int) -> nn.Sequential:
    features = mobilenet.features
    dw = features[MOBILENET_STRIDE_BLOCK].conv[1][0]
    if not (isinstance(dw, nn.Conv2d) and dw.groups == dw.in_channels > 1):
        raise RuntimeError("unexpected torchvision MobileNetV2 layout: features[14].conv[1][0] "
                           f"is {dw}, not the depthwise convolution")
    dw.stride = (last_stride, last_stride)
    if not isinstance(features[MOBILENET_LAST_CONV][2], nn.ReLU6):
        raise RuntimeError("unexpected torchvision MobileNetV2 layout: features[18][2] is "
                           f"{features[MOBILENET_LAST_CONV][2]}, not ReLU6")
    features[MOBILENET_LAST_CONV][2] = nn.Identity()
    return features


def build_backbone(arch: str, last_stride: int = 1,
                   imagenet_state: Optional[Mapping[str, torch.Tensor]] = None,
                   source: str = "") -> nn.Sequential:
    """The feature extractor of ``arch``: ``[N, 3, H, W] -> [N, D, h, w]``.

    Args:
        arch: one of :data:`ARCHS`.
        last_stride: stride of the last stage (1 or 2; ResNet and MobileNetV2 only).
        imagenet_state: torchvision ImageNet state dict (its own key names) to load before the
            modifications; None for random init. Head keys (``fc``/``classifier``) are ignored.
        source: where ``imagenet_state`` came from, for error messages.

    Raises:
        ValueError: unknown ``arch``, bad ``last_stride``, or ``imagenet_state`` misses keys
            of the backbone or has wrong shapes.
    """
    spec = get_spec(arch)
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    model = torchvision_model(spec)
    if imagenet_state is not None:
        _load_imagenet(model, imagenet_state, arch, source)
    if spec.family == "resnet":
        return _resnet_stages(model, spec, last_stride)
    if spec.family == "densenet":
        if last_stride != 1:
            logger.info("%s: last_stride does not apply to DenseNet (as in the reference)", arch)
        return model.features
    return _mobilenet_stages(model, last_stride)


def _is_head(key: str) -> bool:
    return key.startswith(("fc.", "classifier."))


def _load_imagenet(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str,
                   source: str) -> None:
    own = model.state_dict()
    body = {k: v for k, v in state.items() if not _is_head(k)}
    missing = [k for k in own if k not in body and not _is_head(k)
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in body if k not in own]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in body.items() if k in own and v.shape != own[k].shape]
    if missing or shapes:
        raise ValueError(
            f"{source or 'ImageNet state dict'} is not the ImageNet weights of {arch}: "
            f"missing {len(missing)} keys {missing[:10]}, unexpected {unexpected[:10]}, "
            f"shape mismatches {shapes[:10]}")
    if unexpected:
        logger.warning("%s: ignoring %d unexpected keys of %s: %s", arch, len(unexpected),
                       source, unexpected[:10])
    model.load_state_dict({k: v for k, v in body.items() if k in own}, strict=False)
