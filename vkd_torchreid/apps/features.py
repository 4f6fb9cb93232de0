"""Embeddings from a trained checkpoint, for use outside our evaluation protocol.

:class:`FeatureExtractor` loads a config (a path or a packaged name, with KEY VALUE
overrides) and weights (ours, torchreid's, or a released reference experiment folder) and
embeds images or tracklets exactly as the test path does: the same resize and normalisation,
the same frame selection (``video.sample_method``, ``video.test_seq_len``) and the same pooling
(the mean of per-frame features). It never reads ``data.root``.

    extractor = FeatureExtractor("vkd_mars_r50", "log/vkd_mars_r50/model/latest.pth.tar")
    feats = extractor(["a.jpg", "b.jpg"])             # [2, D]
    sets = extractor.tracklets([["t1_f1.jpg", "t1_f2.jpg"], ["t2_f1.jpg"]])  # [2, D]
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Sequence, Union

import numpy as np
import torch

from vkd_torchreid.apps.common import load_config
from vkd_torchreid.data.io import read_image
from vkd_torchreid.engine.embedder import Embedder
from vkd_torchreid.models import open_network
from vkd_torchreid.utils.device import place, resolve_device
from vkd_torchreid.utils.hashing import state_hash

logger = logging.getLogger(__name__)

#: What :meth:`FeatureExtractor.__call__` accepts per image.
Image = Union[str, "os.PathLike[str]", np.ndarray, Any]
CHANNEL_ORDERS = ("RGB", "BGR")


class FeatureExtractor:
    """Embeds images and tracklets with a trained network (see the module docstring).

    Args:
        config_file: a config path or a packaged config's name (``vkd_mars_r50``).
        weights: the checkpoint; its architecture and number of classes are used when it
            declares them (else ``model.name`` and a class count read from the weights).
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'``, ``'cuda:1'``...
        opts: KEY VALUE overrides, as on the command line (``test.amp bf16``).
        channel_order: of array inputs: ``'RGB'`` or ``'BGR'`` (OpenCV's).
        require_arch: a checkpoint that declares another architecture than ``model.name`` is
            an error (as ``export`` does), instead of the checkpoint's being used.

    Raises:
        FileNotFoundError: the weights do not exist.
        CheckpointError: a file that is no checkpoint, or a damaged one (one line naming it,
            what it is and what was expected).
        ValueError: a bad config, override or channel order, weights that do not fit, or
            (``require_arch``) weights of another architecture than ``model.name``.
    """

    def __init__(self, config_file: str, weights: str, device: str = "auto",
                 opts: Sequence[str] = (), channel_order: str = "RGB",
                 trust_checkpoint: bool = False, require_arch: bool = False) -> None:
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order={channel_order!r}: expected one of {CHANNEL_ORDERS}")
        self.cfg = load_config(config_file, opts)
        cfg = self.cfg
        self.channel_order = channel_order
        self.device = resolve_device(device, bool(cfg.use_gpu))
        # in this process: a library call starts no loader workers
        self.embedder = Embedder.from_config(cfg, self.device, workers=0)
        model = open_network(weights, cfg.model.name if require_arch else "",
                             default_arch=cfg.model.name,
                             last_stride=cfg.model.last_stride,
                             trust=trust_checkpoint or cfg.model.trust_checkpoint)
        self.model = place(model.eval(), self.device, self.embedder.options.channels_last)
        logger.info("feature extractor: %s (%d classes) from %s on %s", self.model.arch,
                    self.model.num_classes, weights, self.device)

    @property
    def feature_dim(self) -> int:
        return int(self.model.feature_dim)

    def identity(self) -> Dict[str, Any]:
        """What this extractor's embeddings depend on, JSON-able: the SHA-256 of the network's
        weights (:func:`~vkd_torchreid.utils.hashing.state_hash`), its architecture and last
        stride, and the input settings (size, normalisation, frames per tracklet and how they
        are chosen). Two extractors with equal identities embed alike; a saved search index
        records the one that built it."""
        cfg = self.cfg
        return {"weights_sha256": state_hash(self.model), "arch": self.model.arch,
                "last_stride": int(self.model.last_stride), "height": int(cfg.data.height),
                "width": int(cfg.data.width), "norm_mean": [float(v) for v in cfg.data.norm_mean],
                "norm_std": [float(v) for v in cfg.data.norm_std],
                "test_frames": int(self.embedder.sampling.test_seq_len),
                "sample_method": self.embedder.sampling.sample_method}

    def _array(self, image: Image, index: int) -> np.ndarray:
        """One image as uint8 RGB ``[H, W, 3]``."""
        if isinstance(image, (str, os.PathLike)):
            return read_image(os.fspath(image))  # names the path when it cannot be decoded
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image {index}: expected a path, a PIL image or a uint8 array "
                             f"[H, W, 3], got {arr.dtype} {tuple(arr.shape)}")
        if self.channel_order == "BGR" and not hasattr(image, "convert"):
            arr = arr[..., ::-1]
        return np.ascontiguousarray(arr)

    def __call__(self, images: Sequence[Image]) -> torch.Tensor:
        """Per-image embeddings ``[n, D]`` (float32, on the CPU, not normalised)."""
        return self.embedder.images(self.model, list(images), self._array)

    def tracklets(self, tracklets: Sequence[Sequence[str]]) -> torch.Tensor:
        """One set embedding per tracklet ``[t, D]``: frame files chosen and pooled as our
        evaluation does (``video.sample_method``, ``video.test_seq_len``)."""
        items = [(tuple(os.fspath(p) for p in frames), -1, -1) for frames in tracklets]
        for i, (frames, _, _) in enumerate(items):
            if not frames:
                raise ValueError(f"tracklet {i} has no frames")
        return self.embedder.items(self.model, items)

