"""Test-time feature extraction under inference mode.

A tracklet's embedding is the mean of its frames' pooled features (the model's own set
embedding: BatchNorm in eval mode treats frames independently), so extraction runs the
backbone on frames and averages. The first frame's feature comes for free, which gives the
I2V queries (the first frame of each query tracklet) without decoding anything twice.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vkd_torchreid.data.batch import Batch
from vkd_torchreid.utils.device import autocast

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class Features:
    """Embeddings of one test split.

    Attributes:
        emb: ``[T, D]`` float32 item embeddings (mean over the item's frames).
        first: ``[T, D]`` float32 feature of each item's first frame.
        pids, camids: ``[T]`` int64 arrays.
    """

    emb: torch.Tensor
    first: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray


def frame_features(model: nn.Module, frames: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-frame embeddings ``[F, D]`` of frames ``[F, C, H, W]``, ``chunk`` frames at a time."""
    outs = [model(frames[i:i + chunk]).float() for i in range(0, frames.shape[0], chunk)]
    return torch.cat(outs, 0)


def _batches(loader: DataLoader, progress: bool, desc: str) -> Iterator:
    if not progress:
        yield from loader
        return
    from tqdm import tqdm

    yield from tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


@torch.inference_mode()
def iter_frame_features(model: nn.Module, loader: DataLoader, device: torch.device,
                        amp: str = "", channels_last: bool = False, chunk: int = 256,
                        progress: bool = False, desc: str = "extract"
                        ) -> Iterator[Tuple[Batch, torch.Tensor]]:
    """``(batch, feats [B, V, D])`` for every batch of a test loader: the per-frame
    embeddings :func:`extract` pools (float32, on ``device``)."""
    for batch in _batches(loader, progress, desc):
        img = batch.device_images(device, channels_last)
        b, v = img.shape[:2]
        with autocast(device, amp):
            feats = frame_features(model, img.reshape(b * v, *img.shape[2:]), chunk)
        yield batch, feats.view(b, v, -1)


@torch.inference_mode()
def extract(model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "",
            channels_last: bool = False, chunk: int = 256, progress: bool = False,
            desc: str = "extract") -> Features:
    """Embeddings of every item of a test loader.

    Args:
        model: in eval mode; a 4-D input ``[F, C, H, W]`` gives per-frame embeddings.
        loader: yields ``img`` ``[B, V, C, H, W]`` (V frames per item), ``pid``, ``camid``.
        chunk: frames per forward pass (bounds memory for long tracklets).
    """
    embs, firsts, pids, camids = [], [], [], []
    for batch, feats in iter_frame_features(model, loader, device, amp, channels_last, chunk,
                                            progress, desc):
        embs.append(feats.mean(1).cpu())
        firsts.append(feats[:, 0].cpu())
        pids.append(batch.pid.numpy())
        camids.append(batch.camid.numpy())
    return Features(torch.cat(embs), torch.cat(firsts), np.concatenate(pids),
                    np.concatenate(camids))


def concat(a: Optional[Features], b: Features) -> Features:
    """Items of ``a`` followed by those of ``b`` (``a`` may be None)."""
    if a is None:
        return b
    return Features(torch.cat([a.emb, b.emb]), torch.cat([a.first, b.first]),
                    np.concatenate([a.pids, b.pids]), np.concatenate([a.camids, b.camids]))
