"""Embedding items as the evaluation does: the one :class:`Embedder` that the Evaluator, the
feature extractor and the analyses share.

An item's frames are chosen by ``video.sample_method`` (``evenly``: ``video.test_seq_len``
frames, else ``video.seq_len``; ``all``) and resized as the test transform does, normalised
(``data.norm_*``), embedded by the network in eval mode (``test.amp``, ``train.channels_last``,
``video.test_chunk`` frames a pass); the item's embedding is the mean of its frames' features,
L2-normalised when ``test.normalize_feature`` is on.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vkd_torchreid.data.batch import Batch, Item
from vkd_torchreid.data.collate import TestCollate
from vkd_torchreid.data.manager import Loader, SamplingOptions, test_loader
from vkd_torchreid.data.transforms import AugmentOptions, TestFrameTransform
from vkd_torchreid.engine.extract import Features, extract, frame_features, iter_frame_features
from vkd_torchreid.utils.device import autocast, resolve_device
from vkd_torchreid.utils.progress import progress_enabled


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """The ``test`` section (and the extraction settings) of the evaluation."""

    dist_metric: str
    normalize_feature: bool
    ranks: tuple
    rerank: bool
    visrank: bool
    visrank_topk: int
    amp: str
    channels_last: bool
    chunk: int
    progress: bool

    @classmethod
    def from_config(cls, cfg: Any) -> EvalOptions:
        t = cfg.test
        progress = progress_enabled(t.progress)
        return cls(dist_metric=t.dist_metric, normalize_feature=t.normalize_feature,
                   ranks=tuple(t.ranks), rerank=t.rerank, visrank=t.visrank,
                   visrank_topk=t.visrank_topk, amp=t.amp,
                   channels_last=cfg.train.channels_last, chunk=cfg.video.test_chunk,
                   progress=progress)


class Embedder:
    """Embeds test items (see the module docstring).

    Args:
        options: precision, memory format, chunk, progress, normalisation.
        augment: input size and normalisation (the test transform).
        sampling: test frames per tracklet, sampling method, batch size and workers.
        device: where the network runs.
        pin_memory: pin the loaders' batches (CUDA).
    """

    def __init__(self, options: EvalOptions, augment: AugmentOptions, sampling: SamplingOptions,
                 device: torch.device, pin_memory: bool = False) -> None:
        self.options = options
        self.augment = augment
        self.sampling = sampling
        self.device = device
        self.pin_memory = pin_memory
        self.transform = TestFrameTransform(augment)
        # on CUDA the uint8 frames cross and are normalised there
        self.collate = TestCollate(augment, defer=device.type == "cuda")

    @classmethod
    def from_config(cls, cfg: Any, device: Optional[torch.device] = None,
                    workers: Optional[int] = None) -> Embedder:
        """The evaluation's embedder; ``workers`` overrides ``data.workers``."""
        device = device or resolve_device("auto", bool(cfg.use_gpu))
        sampling = SamplingOptions.from_config(cfg)
        if workers is not None:
            sampling = dataclasses.replace(sampling, workers=workers)
        return cls(EvalOptions.from_config(cfg), AugmentOptions.from_config(cfg), sampling,
                   device, pin_memory=device.type == "cuda")

    @property
    def seq_len(self) -> int:
        """Frames per test tracklet with ``evenly`` sampling."""
        return self.sampling.test_seq_len

    @property
    def sample_method(self) -> str:
        return self.sampling.sample_method

    def loader(self, items: Sequence[Sequence], tracklets: bool = True,
               sample_method: str = "") -> Optional[Loader]:
        """The test loader of ``items``; None when empty."""
        return test_loader(items, tracklets, self.augment, self.sampling, self.pin_memory,
                           sample_method, on_device=self.device.type == "cuda")

    def iter_frames(self, model: nn.Module, loader: Any,
                    desc: str = "extract") -> Iterator[Tuple[Batch, torch.Tensor]]:
        """``(batch, feats [B, V, D])`` per batch of a test loader (``model`` in eval mode)."""
        o = self.options
        return iter_frame_features(model, loader, self.device, o.amp, o.channels_last, o.chunk,
                                   o.progress, desc)

    def extract(self, model: nn.Module, loader: Any, desc: str = "extract") -> Features:
        """Features of every item of a test loader (not normalised)."""
        o = self.options
        return extract(model, loader, self.device, o.amp, o.channels_last, o.chunk, o.progress,
                       desc)

    def items(self, model: nn.Module, items: Sequence[Sequence], tracklets: bool = True,
              sample_method: str = "", desc: str = "extract") -> torch.Tensor:
        """``[T, D]`` embeddings (not normalised) of test items."""
        loader = self.loader(items, tracklets, sample_method)
        if loader is None:
            return torch.zeros(0, int(model.feature_dim))
        return self.extract(model, loader, desc).emb

    @torch.inference_mode()
    def images(self, model: nn.Module, images: Sequence[Any],
               read: Optional[Callable[[Any, int], np.ndarray]] = None) -> torch.Tensor:
        """``[n, D]`` features (float32, CPU, not normalised) of single images, read
        ``test.batch_size`` at a time as uint8 RGB ``[H, W, 3]`` by ``read(image, index)``
        (default: the images are such arrays)."""
        outs: List[torch.Tensor] = [torch.zeros(0, int(model.feature_dim))]
        step = self.sampling.test_batch_size
        for start in range(0, len(images), step):
            frames = [read(img, start + i) if read is not None else img
                      for i, img in enumerate(images[start:start + step])]
            batch = self.collate.for_device(  # finished (CPU) batches pass as they are
                self.collate([Item(self.transform(f)[None], -1, -1) for f in frames]))
            x = batch.device_images(self.device, self.options.channels_last)[:, 0]
            with autocast(self.device, self.options.amp):
                outs.append(frame_features(model, x, self.options.chunk).float().cpu())
        return torch.cat(outs)

    def normalized(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb [T, D]`` L2-normalised when ``test.normalize_feature`` is on."""
        return F.normalize(emb, dim=1) if self.options.normalize_feature else emb

    def normalized_features(self, f: Features) -> Features:
        """Both embeddings of ``f`` as :meth:`normalized` gives them."""
        return Features(self.normalized(f.emb), self.normalized(f.first), f.pids, f.camids)

    @staticmethod
    def pool(frames: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """``[T, D]``: the mean of consecutive runs of ``counts`` rows of ``frames [F, D]``
        (an item's embedding from its frames' features, as :func:`extract` pools them)."""
        counts_t = torch.tensor(list(counts))
        owner = torch.repeat_interleave(torch.arange(len(counts_t)), counts_t)
        out = torch.zeros(len(counts_t), frames.shape[1]).index_add_(0, owner, frames)
        return out / counts_t[:, None].to(out.dtype)
