"""The one way from a checkpoint to a network: :func:`open_network`.

Every command that turns a file into a network (training's teacher and student checkpoints,
``model.load_weights``, evaluation, export, search, the analyses, the feature extractor) goes
through it, so a checkpoint that is not what the caller needs is reported in one place, as one
:class:`CheckpointMismatchError` line naming the file, what it holds and what was expected.
"""
from __future__ import annotations

import os
from typing import Optional

from vkd_torchreid.models.backbones import get_spec
from vkd_torchreid.models.vkdnet import VKDNet
from vkd_torchreid.models.weights import (
    NetworkCheckpoint,
    WeightsMismatchError,
    load_network_state,
    read_network,
)
from vkd_torchreid.utils.checkpoint import CheckpointError


class CheckpointMismatchError(ValueError):
    """A readable checkpoint that is not the network the caller needs.

    Attributes:
        path: the checkpoint (file or reference folder).
        found: what it holds (``a vkd_resnet18 network``, ``625 classes``...).
        expected: what the caller needed.
        key: the config key or option the path came from ('' if none).
    """

    def __init__(self, path: str, found: str, expected: str, key: str = "") -> None:
        self.path, self.found, self.expected, self.key = path, found, expected, key
        where = f"{key} {path}" if key else path
        super().__init__(f"{where} holds {found} but {expected}")


def read_checkpoint(path: str, trust: bool = False, key: str = "") -> NetworkCheckpoint:
    """Reads a network checkpoint (see :func:`vkd_torchreid.models.weights.read_network`).

    Raises:
        FileNotFoundError: ``path`` does not exist (named, with ``key``).
        CheckpointError: a file that is no checkpoint, or a damaged one (one line naming it,
            after ``key``, with what it is and what was expected).
        ValueError: a reference folder without usable hparams.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{key + ': ' if key else ''}weights not found: {path}")
    try:
        return read_network(path, trust=trust)
    except CheckpointError as exc:
        if not key:
            raise
        raise CheckpointError(f"{key} {exc}") from exc


def open_network(path: str, arch: str = "", num_classes: Optional[int] = None, *,
                 default_arch: str = "", default_classes: Optional[int] = None,
                 last_stride: int = 1, strict: bool = True, trust: bool = False,
                 key: str = "", checkpoint: Optional[NetworkCheckpoint] = None) -> VKDNet:
    """The network of a checkpoint (ours, torchreid's, a bare state dict or a released
    reference experiment folder), built and loaded on the CPU, in train mode.

    Args:
        path: the checkpoint.
        arch: the architecture the caller needs; '' accepts the one the checkpoint declares.
        num_classes: the class count the caller needs; None accepts the checkpoint's.
        default_arch: built when ``arch`` is '' and the checkpoint declares none.
        default_classes: used when ``num_classes`` is None and the checkpoint has no
            classifier; None makes that an error.
        last_stride: stride of the last stage (the checkpoint does not record it).
        strict: every key must fit (False: load what fits, log the rest).
        trust: allow legacy pickled checkpoints.
        key: the config key or option ``path`` came from, for messages.
        checkpoint: ``path`` already read with :func:`read_checkpoint` (not read again).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointMismatchError: another architecture or class count than needed, no class count
            to build with, or weights that do not fit the network.
        CheckpointError, ValueError: an unreadable checkpoint.
    """
    ckpt = checkpoint if checkpoint is not None else read_checkpoint(path, trust, key)
    if arch and ckpt.arch and ckpt.arch != arch:
        raise CheckpointMismatchError(path, f"a {ckpt.arch} network", f"the run needs a {arch}", key)
    if num_classes is not None and ckpt.num_classes not in (None, num_classes):
        raise CheckpointMismatchError(path, f"{ckpt.num_classes} classes",
                                 f"the run needs {num_classes} (its training identities)", key)
    name = arch or ckpt.arch or default_arch
    classes = num_classes or ckpt.num_classes or default_classes
    if not name:
        raise CheckpointMismatchError(path, "a network that declares no architecture",
                                 "no model.name was given to build it with", key)
    if classes is None:
        raise CheckpointMismatchError(path, "no classifier.weight",
                                 "a classifier is needed to tell its class count", key)
    get_spec(name)
    model = VKDNet(name, classes, loss="triplet", pretrained=False, last_stride=last_stride)
    try:
        load_network_state(model, ckpt, strict=strict)
    except WeightsMismatchError as exc:
        declared = "" if ckpt.arch else (" (it declares no architecture: the config's "
                                         f"model.name {name} was tried)")
        raise CheckpointMismatchError(path, f"weights that do not fit{declared}: {exc.summary()}",
                                      f"the run needs a {name} with {classes} classes", key
                                      ) from exc
    return model


def load_weights(model: VKDNet, path: str, strict: bool = True, trust: bool = False) -> None:
    """Loads a checkpoint into an existing ``model`` in place (see :func:`open_network` for
    building the network from the checkpoint instead).

    Raises:
        FileNotFoundError: no such file / no checkpoint in the folder.
        ValueError: the weights do not fit the model (the message names the file, the first
            missing and unexpected keys and the shape mismatches).
    """
    load_network_state(model, read_checkpoint(path, trust), strict=strict)
