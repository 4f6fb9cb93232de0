"""The teacher cache's embedding loop: every training frame once (resized as at test time,
no random augmentation) through the eval-mode teacher, with its horizontal flip, into a float16
array, stopping between batches when asked (:mod:`.teacher_cache` builds the files)."""
from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vkd_torchreid.data.io import read_image
from vkd_torchreid.data.transforms import (
    AugmentOptions,
    normalize_batch,
    normalize_on_device,
    resize,
)
from vkd_torchreid.utils.device import autocast, to_device


class BuildInterrupted(KeyboardInterrupt):
    """A build stopped on request (SIGINT/SIGTERM); it left no manifest and no features file."""


class Frames(Dataset):
    """Every training frame once, resized (no random augmentation): uint8 ``[H, W, 3]``."""

    def __init__(self, paths: List[str], height: int, width: int) -> None:
        self.paths, self.height, self.width = paths, height, width

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return resize(read_image(self.paths[i]), self.height, self.width)


def stack_frames(items: List[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(items))


@torch.inference_mode()
def embed_frames(teacher: nn.Module, loader: DataLoader, options: AugmentOptions, device: torch.device,
           amp: str, channels_last: bool, flip: bool, out: np.memmap,
           progress: bool, stop: Optional[Callable[[], bool]] = None) -> Iterator[int]:
    """Writes the features of every frame (and its flip) into ``out``; yields rows done.

    Raises:
        BuildInterrupted: ``stop()`` became true (checked before every batch).
    """
    row = 0
    batches: Any = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="teacher cache", dynamic_ncols=True)
    for frames in batches:
        if stop is not None and stop():
            raise BuildInterrupted("stopped by a signal during the teacher cache build")
        if device.type == "cuda":  # uint8 crosses (pinned), normalised on the device
            x = normalize_on_device(frames, options.norm_mean, options.norm_std, device,
                                    channels_last)
        else:
            x = to_device(normalize_batch(frames, options.norm_mean, options.norm_std), device,
                          channels_last)
        views = [x, x.flip(-1)] if flip else [x]
        with autocast(device, amp):
            feats = [teacher(v).float() for v in views]  # eval mode: pooled features [B, D]
        stacked = torch.stack(feats, 1).reshape(-1, feats[0].shape[1])  # frame-major
        out[row:row + stacked.shape[0]] = stacked.cpu().numpy().astype(np.float16)
        row += stacked.shape[0]
        yield row


__all__ = ["BuildInterrupted", "Frames", "embed_frames", "stack_frames"]
