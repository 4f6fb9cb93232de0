"""Loading weights into a :class:`VKDNet`: ours, torchreid's, bare state dicts, and the
released experiments of the reference implementation (aimagelab/VKD).

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

import dataclasses
import glob
import json
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import torch

from vkd_torchreid.models.backbones import SPECS, get_spec
from vkd_torchreid.models.pretrained import remap_densenet_keys
from vkd_torchreid.models.vkdnet import VKDNet

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


def _arch_from_reference_keys(state: StateDict) -> Optional[str]:
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


def _hparams(folder: str) -> Tuple[str, int]:
    path = os.path.join(folder, HPARAMS)
    if not os.path.isfile(path):
        raise ValueError(f"{folder} is not a reference experiment: {path} not found")
    with open(path, encoding="utf-8") as fh:
        hparams = json.load(fh)
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
        return _hparams(folder_or_file)
    state = _read_state(folder_or_file)
    if not is_reference_state(state):
        raise ValueError(f"{folder_or_file} is not a reference TriNet state dict "
                         "(no backbone.features_layers.* keys)")
    arch = _arch_from_reference_keys(state)
    weight = state.get("classifier.classifier.weight")
    if arch is None or weight is None:
        raise ValueError(f"cannot infer the architecture / number of classes of "
                         f"{folder_or_file}; pass the experiment folder with {HPARAMS}")
    return arch, int(weight.shape[0])


def _read_checkpoint(path: str, trust: bool = False) -> Tuple[StateDict, Dict[str, Any]]:
    """The state dict (``module.`` prefixes stripped) and the ``meta`` dict of a checkpoint."""
    # imported here: vkd_torchreid.engine imports this package (avoids an import cycle)
    from vkd_torchreid.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, trust=trust)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"{path} holds no state dict (a dict of tensors, or a checkpoint "
                         "with a 'state_dict')")
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    meta = dict(meta) if isinstance(meta, dict) else {}
    if isinstance(ckpt, dict) and isinstance(ckpt.get("epoch"), int):
        meta.setdefault("epoch", ckpt["epoch"])
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, meta


def _read_state(path: str, trust: bool = False) -> StateDict:
    return _read_checkpoint(path, trust)[0]


@dataclasses.dataclass
class NetworkCheckpoint:
    """A network's weights read once, in our key names, with what the file says it is.

    Attributes:
        source: the file the weights came from (inside a reference folder: its ``chk/`` file).
        state: the state dict in our key names.
        arch: our model name, as declared (our checkpoints' ``meta``, a reference folder's
            ``params/hparams.json``) or inferred (reference key names); None if unknown
            (torchreid checkpoints, bare state dicts).
        num_classes: the classifier's number of classes, None if it has no classifier.
        epoch, generation: what our checkpoints record (0 when the file does not say).
    """

    source: str
    state: StateDict
    arch: Optional[str]
    num_classes: Optional[int]
    epoch: int = 0
    generation: int = 0


def read_network(path: str, trust: bool = False) -> NetworkCheckpoint:
    """Reads a network checkpoint of any kind :func:`load_weights` accepts.

    Raises:
        FileNotFoundError: no such path, or no checkpoint in a reference folder.
        ValueError: not a state dict, or a reference folder without usable hparams.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights not found: {path}")
    arch: Optional[str] = None
    source = path
    if os.path.isdir(path):
        arch, _ = _hparams(path)
        source = reference_checkpoint_file(path)
    state, meta = _read_checkpoint(source, trust=trust)
    if is_reference_state(state):
        inferred = _arch_from_reference_keys(state)
        if arch is not None and inferred is not None and inferred != arch:
            raise ValueError(f"{source} holds a reference {inferred} network but "
                             f"{os.path.join(path, HPARAMS)} declares a {arch}")
        arch = arch or inferred
        if arch is None:
            raise ValueError(f"cannot infer the architecture of {source}; pass the "
                             f"experiment folder with {HPARAMS}")
        state = reference_to_ours(state, arch)
    elif isinstance(meta.get("arch"), str):
        arch = meta["arch"]
    classes = state.get("classifier.weight")
    num_classes = int(classes.shape[0]) if classes is not None and classes.dim() == 2 else None
    return NetworkCheckpoint(source, state, arch, num_classes, int(meta.get("epoch", 0)),
                             int(meta.get("generation", 0)))


def _mismatch_report(model: VKDNet, state: StateDict) -> Tuple[List[str], List[str], List[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and v.shape != own[k].shape]
    return missing, unexpected, shapes


def load_weights(model: VKDNet, path: str, strict: bool = True, trust: bool = False) -> None:
    """Loads weights into ``model`` in place.

    Args:
        model: the network, built for the right architecture and number of classes.
        path: our checkpoint, a torchreid checkpoint (``module.`` prefixes are stripped), a
            bare state dict, a reference state-dict file, or a reference experiment folder.
        strict: any missing / unexpected key or shape mismatch is an error (missing
            ``num_batches_tracked`` buffers excepted). False: load what fits, log the rest.
        trust: allow legacy pickled checkpoints (``torch.load(weights_only=False)``).

    Raises:
        FileNotFoundError: no such file / no checkpoint in the folder.
        ValueError: the weights do not fit the model (message lists the first missing and
            unexpected keys and the shape mismatches; a different architecture or number of
            classes is named as such).
    """
    load_network_state(model, read_network(path, trust=trust), strict=strict)


def load_network_state(model: VKDNet, ckpt: NetworkCheckpoint, strict: bool = True) -> None:
    """Loads what :func:`read_network` read into ``model`` (see :func:`load_weights`)."""
    source, state = ckpt.source, ckpt.state
    if ckpt.arch is not None and ckpt.arch != model.arch:
        raise ValueError(f"{source} holds a {ckpt.arch} network, the model is a {model.arch}")
    if ckpt.num_classes is not None and ckpt.num_classes != model.num_classes:
        msg = f"{source}: checkpoint has {ckpt.num_classes} classes, model has {model.num_classes}"
        if strict:
            raise ValueError(msg)
        logger.warning("%s; classifier not loaded", msg)
    missing, unexpected, shapes = _mismatch_report(model, state)
    if missing or unexpected or shapes:
        msg = (f"{source} does not fit {model.arch} ({model.num_classes} classes): "
               f"{len(missing)} missing keys {missing[:10]}; {len(unexpected)} unexpected "
               f"keys {unexpected[:10]}; {len(shapes)} shape mismatches {shapes[:10]}")
        if strict:
            raise ValueError(msg)
        logger.warning("%s (strict=False: loading the rest)", msg)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items()
                           if k in own and v.shape == own[k].shape}, strict=False)
    logger.info("loaded %s into %s", source, model.arch)
