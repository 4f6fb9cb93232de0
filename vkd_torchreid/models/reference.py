"""Interoperability with the reference implementation (aimagelab/VKD): its key names, its
released experiment folders, and the architecture they hold.

A reference experiment is a folder ``params/hparams.json`` (``backbone_type``,
``num_classes``) + ``chk/<name>`` (``torch.save(TriNet.state_dict())``). The checkpoint
preferred is ``chk/chk_di_<N>`` with the highest N (the students saved by the reference's
``train_distill.py`` after each generation), else ``chk/chk_end`` (teachers of
``train_v2v.py``). The state-dict file itself is accepted too.

Reference key names (``model/net.py``, ``model/cbam/bam.py``) and ours:

=============================================================  ===============================
``backbone.features_layers.0.{0,1}.*`` (ResNet stem conv, bn)  ``backbone.{conv1,bn1}.*``
``backbone.features_layers.{k}.0.<block>.*``, k = 1..4         ``backbone.layer{k}.<block>.*``
``backbone.features_layers.{k}.0.bam.*``, k = 1..3             ``backbone.bam{k}.*`` (see bam.py)
``backbone.features_layers.{i}.*`` (DenseNet, i = 0..11)       ``backbone.{conv0,...,norm5}.*``
``backbone.features_layers.{i}.*`` (MobileNetV2, i = 0..18)    ``backbone.{i}.*``
``classifier.bottleneck.*``                                    ``bnneck.*``
``classifier.classifier.weight``                               ``classifier.weight``
=============================================================  ===============================
"""
from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any, Dict, Optional, Tuple

import torch

from vkd_torchreid.models.backbones import SPECS, get_spec
from vkd_torchreid.models.pretrained import remap_densenet_keys
from vkd_torchreid.utils.checkpoint import read_state_dict
from vkd_torchreid.utils.jsonio import read_json

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

#: Reference ``backbone_type`` -> our model name.
REFERENCE_ARCHS: Dict[str, str] = {s.reference: s.name for s in SPECS.values()}
#: Children of torchvision's ``densenet121().features``, the reference's features_layers.
DENSENET_CHILDREN = ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1",
                     "denseblock2", "transition2", "denseblock3", "transition3",
                     "denseblock4", "norm5")
_BAM_NAMES = {
    "channel_att.gate_c.gate_c_fc_0.": "channel_gate.fc.",
    "channel_att.gate_c.gate_c_bn_1.": "channel_gate.bn.",
    "channel_att.gate_c.gate_c_fc_final.": "channel_gate.fc_final.",
    "spatial_att.gate_s.gate_s_conv_reduce0.": "spatial_gate.reduce.",
    "spatial_att.gate_s.gate_s_bn_reduce0.": "spatial_gate.reduce_bn.",
    "spatial_att.gate_s.gate_s_conv_final.": "spatial_gate.final.",
}
_BAM_DILATED = re.compile(r"^spatial_att\.gate_s\.gate_s_(conv|bn)_di_(\d+)\.")
_REF_PREFIX = "backbone.features_layers."
_RESNET_STEM = {"0": "conv1", "1": "bn1"}
_REF_KEY = re.compile(r"^backbone\.features_layers\.(\d+)\.(.*)$")
HPARAMS = os.path.join("params", "hparams.json")


def is_reference_state(state: StateDict) -> bool:
    """Whether ``state`` uses the reference's TriNet key names."""
    return any(k.startswith(_REF_PREFIX) for k in state)


def _bam_key(rest: str) -> str:
    for old, new in _BAM_NAMES.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    match = _BAM_DILATED.match(rest)
    if match:
        kind, i = match.groups()
        return f"spatial_gate.dil{i}{'_bn' if kind == 'bn' else ''}." + rest[match.end():]
    return rest


def _backbone_key(index: int, rest: str, family: str) -> str:
    if family == "densenet":
        name = DENSENET_CHILDREN[index] if index < len(DENSENET_CHILDREN) else str(index)
        return f"backbone.{name}.{rest}"
    if family == "mobilenet":
        return f"backbone.{index}.{rest}"
    if index == 0:  # Sequential(conv1, bn1, relu, maxpool)
        sub, _, tail = rest.partition(".")
        stem = _RESNET_STEM.get(sub)
        return f"backbone.{stem}.{tail}" if stem else f"{_REF_PREFIX}0.{rest}"
    if rest.startswith("0."):  # each layer wrapped in an nn.Sequential
        rest = rest[2:]
        if rest.startswith("bam."):
            return f"backbone.bam{index}.{_bam_key(rest[4:])}"
        return f"backbone.layer{index}.{rest}"
    return f"{_REF_PREFIX}{index}.{rest}"  # unknown: left as is, reported as unexpected


def reference_to_ours(state_dict: StateDict, arch: str) -> StateDict:
    """Renames the keys of a reference TriNet state dict to ours (see the module docstring).

    Args:
        state_dict: the reference state dict.
        arch: our model name of the network.

    Returns:
        A new dict with the same tensors; keys it does not know are kept unchanged.
    """
    family = get_spec(arch).family
    out: StateDict = {}
    for key, value in state_dict.items():
        match = _REF_KEY.match(key)
        if match:
            key = _backbone_key(int(match.group(1)), match.group(2), family)
        elif key.startswith("classifier.bottleneck."):
            key = "bnneck." + key[len("classifier.bottleneck."):]
        elif key == "classifier.classifier.weight":
            key = "classifier.weight"
        out[key] = value
    return remap_densenet_keys(out) if family == "densenet" else out


def _find_key(obj: Any, key: str) -> Optional[Any]:
    """``obj[key]`` searched breadth-first through nested dicts."""
    queue = [obj]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            if key in node:
                return node[key]
            queue.extend(v for v in node.values() if isinstance(v, dict))
    return None


def reference_checkpoint_file(folder: str) -> str:
    """The state-dict file of a reference experiment: ``chk/chk_di_<N>`` with the highest N,
    else ``chk/chk_end``.

    Raises:
        FileNotFoundError: neither exists.
    """
    distilled = glob.glob(os.path.join(folder, "chk", "chk_di_*"))
    numbered = [(int(m.group(1)), p) for p in distilled
                if (m := re.search(r"chk_di_(\d+)$", p)) and os.path.isfile(p)]
    if numbered:
        return max(numbered)[1]
    end = os.path.join(folder, "chk", "chk_end")
    if os.path.isfile(end):
        return end
    found = sorted(os.listdir(os.path.join(folder, "chk"))) if os.path.isdir(
        os.path.join(folder, "chk")) else []
    raise FileNotFoundError(f"reference experiment {folder} has no chk/chk_di_<N> or "
                            f"chk/chk_end (chk/ holds {found[:10]})")


def arch_from_reference_keys(state: StateDict) -> Optional[str]:
    indices = {int(m.group(1)) for k in state if (m := _REF_KEY.match(k))}
    keys = list(state)
    if any(".denselayer" in k for k in keys):
        return "vkd_densenet121"
    if max(indices, default=-1) == 18:
        return "vkd_mobilenetv2"
    if not indices:
        return None

    def blocks(layer: int) -> int:
        found = {int(m.group(1)) for k in keys
                 if (m := re.match(rf"^backbone\.features_layers\.{layer}\.0\.(\d+)\.", k))}
        return len(found)

    bottleneck = any(".conv3." in k for k in keys)
    bam = any(".0.bam." in k for k in keys)
    depth = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101}.get(
        (bottleneck, blocks(3)))
    if depth is None:
        return None
    name = f"vkd_resnet{depth}" + ("_bam" if bam else "")
    return name if name in SPECS else None


def reference_hparams(folder: str) -> Tuple[str, int]:
    path = os.path.join(folder, HPARAMS)
    if not os.path.isfile(path):
        raise ValueError(f"{folder} is not a reference experiment: {path} not found")
    hparams = read_json(path)  # a broken file: one line naming it, with line and column
    values = {}
    for key in ("backbone_type", "num_classes"):
        value = _find_key(hparams, key)
        if value is None:
            raise ValueError(f"{path} has no {key!r}")
        values[key] = value
    btype = values["backbone_type"]
    if btype not in REFERENCE_ARCHS:
        raise ValueError(f"{path}: backbone_type {btype!r} is not one of "
                         f"{sorted(REFERENCE_ARCHS)}")
    return REFERENCE_ARCHS[btype], int(values["num_classes"])


def reference_arch(folder_or_file: str) -> Tuple[str, int]:
    """Our model name and the number of classes of a reference experiment.

    Args:
        folder_or_file: the experiment folder (reads ``params/hparams.json``) or a reference
            state-dict file (inferred from its keys and ``classifier.classifier.weight``).

    Raises:
        ValueError: hparams missing or incomplete (names file and key), or the file's
            architecture cannot be inferred.
        FileNotFoundError: no such path.
    """
    if os.path.isdir(folder_or_file):
        return reference_hparams(folder_or_file)
    state = read_state_dict(folder_or_file)[0]
    if not is_reference_state(state):
        raise ValueError(f"{folder_or_file} is not a reference TriNet state dict "
                         "(no backbone.features_layers.* keys)")
    arch = arch_from_reference_keys(state)
    weight = state.get("classifier.classifier.weight")
    if arch is None or weight is None:
        raise ValueError(f"cannot infer the architecture / number of classes of "
                         f"{folder_or_file}; pass the experiment folder with {HPARAMS}")
    return arch, int(weight.shape[0])


