"""ImageNet initialisation from torchvision weight files already on disk (never downloads).

Files are looked up by torchvision's own file names (read from its weight enums, e.g.
``ResNet50_Weights.IMAGENET1K_V1.url`` -> ``resnet50-0676ba61.pth``) in
``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``), or taken from an
explicit ``pretrained_path`` (the file itself, or a folder holding it).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Tuple

import torch
import torchvision

from vkd_torchreid.models.backbones import get_spec

logger = logging.getLogger(__name__)

# Old torchvision DenseNet files name the layers of a dense layer ``norm.1``, ``conv.2``...;
# the modules are ``norm1``, ``conv2`` (torchvision remaps the same way when it loads them).
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def imagenet_url(arch: str) -> str:
    """torchvision's download URL of the ImageNet weights of ``arch`` (IMAGENET1K_V1)."""
    enum = getattr(torchvision.models, get_spec(arch).weights)
    return enum.IMAGENET1K_V1.url


def imagenet_file(arch: str, pretrained_path: str = "") -> str:
    """Path of the ImageNet weight file of ``arch``.

    Args:
        arch: our model name.
        pretrained_path: the weight file, or a folder holding it under torchvision's name;
            empty: the torch hub cache (``torch.hub.get_dir()/checkpoints``).

    Raises:
        FileNotFoundError: no such file; the message gives the URL and where to put it.
    """
    url = imagenet_url(arch)
    name = os.path.basename(url)
    if pretrained_path and not os.path.isdir(pretrained_path):
        path = pretrained_path
    else:
        folder = pretrained_path or os.path.join(torch.hub.get_dir(), "checkpoints")
        path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"ImageNet weights for {arch} not found: download {url} and put it at {path} "
            "(or set model.pretrained_path)")
    return path


def remap_densenet_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Renames old-style DenseNet keys (``denselayer1.norm.1.weight`` -> ``norm1.weight``)."""
    out = {}
    for key, value in state.items():
        match = _DENSENET_OLD_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def load_imagenet_state(arch: str,
                        pretrained_path: str = "") -> Tuple[Dict[str, torch.Tensor], str]:
    """Reads the torchvision ImageNet state dict of ``arch``.

    Returns:
        ``(state_dict, path)``: the state dict with torchvision's key names (DenseNet keys
        modernised) and the file it came from.

    Raises:
        FileNotFoundError: see :func:`imagenet_file`.
        ValueError: the file is not a state dict.
    """
    path = imagenet_file(arch, pretrained_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if get_spec(arch).family == "densenet":
        state = remap_densenet_keys(state)
    logger.info("%s: ImageNet weights from %s", arch, path)
    return state, path
