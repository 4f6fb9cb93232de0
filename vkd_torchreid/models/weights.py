"""Loading weights into a :class:`VKDNet`: ours, torchreid's, bare state dicts, and the
released experiments of the reference implementation (see :mod:`.reference`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import List, Optional, Tuple

from vkd_torchreid.models.reference import (
    HPARAMS,
    StateDict,
    arch_from_reference_keys,
    is_reference_state,
    reference_checkpoint_file,
    reference_hparams,
    reference_to_ours,
)
from vkd_torchreid.models.vkdnet import VKDNet
from vkd_torchreid.utils.checkpoint import read_state_dict

logger = logging.getLogger(__name__)


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
    """Reads a network checkpoint: ours, torchreid's (``module.`` prefixes stripped), a bare
    state dict, a reference state-dict file, or a reference experiment folder.

    Raises:
        FileNotFoundError: no such path, or no checkpoint in a reference folder.
        ValueError: not a state dict, or a reference folder without usable hparams.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights not found: {path}")
    arch: Optional[str] = None
    source = path
    if os.path.isdir(path):
        arch, _ = reference_hparams(path)
        source = reference_checkpoint_file(path)
    state, meta = read_state_dict(source, trust=trust)
    if is_reference_state(state):
        inferred = arch_from_reference_keys(state)
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


class WeightsMismatchError(ValueError):
    """Weights whose keys or shapes do not fit a model.

    Attributes:
        missing, unexpected: the model's keys the weights lack, the weights' keys it lacks.
        shapes: ``key: checkpoint (..) vs model (..)`` for each shape that differs.
    """

    def __init__(self, message: str, missing: List[str], unexpected: List[str],
                 shapes: List[str]) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes

    def summary(self, shown: int = 2) -> str:
        """The counts with the first ``shown`` names of each kind."""
        parts = []
        for what, items in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                            ("shape mismatches", self.shapes)):
            if items:
                more = ", ..." if len(items) > shown else ""
                parts.append(f"{len(items)} {what} ({', '.join(items[:shown])}{more})")
        return "; ".join(parts)


def _mismatch_report(model: VKDNet, state: StateDict) -> Tuple[List[str], List[str], List[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and v.shape != own[k].shape]
    return missing, unexpected, shapes


def load_network_state(model: VKDNet, ckpt: NetworkCheckpoint, strict: bool = True) -> None:
    """Loads what :func:`read_network` read into ``model`` in place.

    Args:
        strict: any missing / unexpected key or shape mismatch is an error (missing
            ``num_batches_tracked`` buffers excepted). False: load what fits, log the rest.

    Raises:
        ValueError: a different architecture or number of classes (named as such).
        WeightsMismatchError: the weights do not fit the model (the message names the file,
            the first missing and unexpected keys and the shape mismatches).
    """
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
            raise WeightsMismatchError(msg, missing, unexpected, shapes)
        logger.warning("%s (strict=False: loading the rest)", msg)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items()
                           if k in own and v.shape == own[k].shape}, strict=False)
    logger.info("loaded %s into %s", source, model.arch)
