"""Where the student gets its teacher's targets: the one seam between the student engine and
its teacher, chosen once by the builder (``DistillOptions.targets``).

- :class:`LiveTeacherTargets`: the teacher runs on the batch's N frames of each item.
- :class:`CachedTeacherTargets` (``vkd.teacher_cache``): the teacher's per-frame features of
  every training frame, computed once (:mod:`.teacher_cache`); the loader decodes only the
  student's M frames and gives each item's N cache rows (:class:`CacheRows`, the one copy of
  the row formula, handed to the dataset). With eval-mode BatchNorm both give the same targets.

Both are called under ``torch.inference_mode`` by the engine and return ``(t_emb [B, D],
t_logits [B, C])``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from vkd_torchreid.data.batch import Batch
from vkd_torchreid.data.transforms import AugmentOptions
from vkd_torchreid.engine.teacher_cache import (
    CacheError,
    CacheKey,
    TeacherCache,
    check_writable,
    frame_offsets,
    open_or_build,
    usable,
)
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.device import send
from vkd_torchreid.utils.progress import progress_enabled

logger = logging.getLogger(__name__)

#: Values of ``DistillOptions.targets``.
TARGETS = ("live", "cached")
TEACHER_CACHE_DIR = "teacher_cache"


@dataclasses.dataclass(frozen=True)
class CacheRows:
    """The teacher cache's row of a frame: ``(offsets[t] + f) * F + flip`` for frame ``f`` of
    training tracklet ``t`` (``F`` = 2 when flips have rows of their own, else 1).

    A value (hashable, picklable: it travels to the loader workers with the dataset).
    """

    offsets: Tuple[int, ...]  # first frame of each training tracklet among all frames
    flip: bool

    @classmethod
    def of(cls, tracklets: Sequence[Sequence], flip: bool) -> CacheRows:
        return cls(tuple(int(o) for o in frame_offsets(tracklets)), bool(flip))

    def __call__(self, tracklets: np.ndarray, frames: np.ndarray,
                 flips: np.ndarray) -> np.ndarray:
        """int64 rows of frames ``(tracklet, frame, flipped)`` (arrays of one shape)."""
        offsets = np.asarray(self.offsets, dtype=np.int64)
        rows = (offsets[np.asarray(tracklets, dtype=np.int64)] + frames) * (2 if self.flip else 1)
        return rows + (np.asarray(flips, dtype=np.int64) if self.flip else 0)


class LiveTeacherTargets:
    """The teacher runs on every frame the loader gives (all N of each item)."""

    name = "live"
    #: Live targets need every frame: the loader's items carry no cache rows.
    rows: Optional[CacheRows] = None

    def check(self, teacher: nn.Module) -> None:
        """Nothing to check."""

    def prepare(self, teacher: nn.Module, device: torch.device,
                stop: Optional[Callable[[], bool]] = None) -> None:
        """Nothing to prepare."""

    def __call__(self, teacher: nn.Module, imgs: torch.Tensor,
                 batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """The teacher's set embedding ``[B, D]`` and mean logits ``[B, C]`` of ``imgs``
        ``[B, N, C, H, W]`` (on the device)."""
        return teacher.forward_features(imgs)


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    """Where and how the cache is built (values from the config: :meth:`from_config`)."""

    root: str
    augment: AugmentOptions
    amp: str
    channels_last: bool
    workers: int
    batch_size: int
    progress: bool
    device_copy: bool  # keep the features in device memory when they fit
    verify: str  # how rank 0 checks a cache before reuse: 'cheap' or 'full'

    @classmethod
    def from_config(cls, cfg: Any) -> CacheSettings:
        return cls(root=cfg.vkd.teacher_cache_dir
                   or os.path.join(cfg.data.save_dir, TEACHER_CACHE_DIR),
                   augment=AugmentOptions.from_config(cfg), amp=cfg.train.amp,
                   channels_last=cfg.train.channels_last, workers=cfg.data.workers,
                   batch_size=cfg.test.batch_size, progress=progress_enabled(cfg.test.progress),
                   device_copy=cfg.vkd.teacher_cache_device,
                   verify=cfg.vkd.teacher_cache_verify)


class CachedTeacherTargets:
    """Targets from the teacher-feature cache (see the module docstring).

    The cache is opened (or built) by :meth:`prepare`, when training starts: under torchrun
    rank 0 builds or checks it while the others wait, then they open what it wrote.

    Args:
        cfg: the run's config (:meth:`CacheKey.from_config`, :meth:`CacheSettings.from_config`).
        tracklets: the training tracklets, in the loader's order.
    """

    name = "cached"

    def __init__(self, cfg: Any, tracklets: Sequence[Sequence]) -> None:
        self.cfg = cfg
        self.tracklets = tracklets
        self.settings = CacheSettings.from_config(cfg)
        #: The row function handed to the training dataset.
        self.rows: Optional[CacheRows] = CacheRows.of(tracklets, cfg.vkd.teacher_cache_flip)
        self.cache: Optional[TeacherCache] = None
        self.features: Optional[torch.Tensor] = None  # the device copy, if one was made
        self._key: Optional[Tuple[int, CacheKey]] = None  # (id of the teacher, its key)

    @classmethod
    def in_memory(cls, features: np.ndarray, rows: CacheRows) -> CachedTeacherTargets:
        """Targets over features already in memory, ``[rows, D]`` (benchmarks, tests)."""
        targets = cls.__new__(cls)
        targets.cfg, targets.tracklets, targets.rows = None, (), rows
        targets.cache = TeacherCache.in_memory(features, np.asarray(rows.offsets), rows.flip)
        targets.features, targets._key = None, None
        return targets

    def _cache_key(self, teacher: nn.Module) -> CacheKey:
        """The key of ``teacher``'s cache, computed once per teacher (it hashes the weights
        and stats every training frame)."""
        if self._key is None or self._key[0] != id(teacher):
            self._key = (id(teacher), CacheKey.from_config(self.cfg, teacher, self.tracklets))
        return self._key[1]

    def check(self, teacher: nn.Module) -> None:
        """Before anything is written (rank 0; the others never write the cache): a cache
        that must be built needs a folder it can be written to.

        Raises:
            CacheError: no valid cache of ``teacher`` and a folder that cannot be written.
        """
        if not distributed.context().is_main:
            return
        if not usable(self._cache_key(teacher), self.tracklets, self.settings.root):
            check_writable(self.settings.root)

    def _open(self, teacher: nn.Module, device: torch.device, build: bool,
              stop: Optional[Callable[[], bool]] = None) -> TeacherCache:
        s = self.settings
        return open_or_build(teacher, self.tracklets, self._cache_key(teacher), s.root,
                             s.augment, device, s.amp, s.channels_last, s.workers, s.batch_size,
                             s.progress, build=build, verify=s.verify if build else "cheap",
                             stop=stop)

    def prepare(self, teacher: nn.Module, device: torch.device,
                stop: Optional[Callable[[], bool]] = None) -> None:
        """Opens (rank 0: builds when needed, checking a reused cache as
        ``vkd.teacher_cache_verify`` says) the cache of ``teacher`` (eval mode); keeps a device
        copy with ``vkd.teacher_cache_device`` when it fits. Idempotent.

        Args:
            stop: polled before every batch of a build (a signal arrived).

        Raises:
            ValueError: on every rank, when one rank cannot build or read the cache
                (its :class:`CacheError` message).
            BuildInterrupted: ``stop()`` became true during the build (rank 0).
        """
        if self.cache is not None:
            return
        error, cache = None, None
        if distributed.context().is_main:
            try:
                cache = self._open(teacher, device, True, stop)
            except CacheError as exc:
                error = str(exc)
        distributed.long_barrier()
        distributed.agree(error)
        if cache is None:  # the other ranks never build: several would write one folder
            try:
                cache = self._open(teacher, device, False)
            except CacheError as exc:
                error = str(exc)
        distributed.agree(error)  # every rank: one that cannot read the cache stops them all
        self.cache = cache
        if self.settings.device_copy:
            self.features = self._device_copy(cache, device)

    @staticmethod
    def _device_copy(cache: TeacherCache, device: torch.device) -> Optional[torch.Tensor]:
        """The features on ``device`` (float16) when they fit in its free memory with a 10%
        margin; otherwise None (logged), and the memory map is read."""
        nbytes = int(np.prod(cache.features.shape)) * 2
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes * 1.1 > free:
                logger.warning("teacher cache: %.2f GB do not fit in the %.2f GB free on %s; "
                               "reading the memory map instead", nbytes / 1e9, free / 1e9, device)
                return None
        logger.info("teacher cache: a %.2f GB copy on %s", nbytes / 1e9, device)
        return torch.from_numpy(np.array(cache.features)).to(device)  # read into memory

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 features ``[..., D]`` of cache rows (int64, any shape)."""
        if self.features is not None:
            return self.features[send(rows, self.features.device)].float()
        if self.cache is None:
            raise RuntimeError("the teacher cache is not open: call prepare() first")
        return self.cache.gather(rows)

    def __call__(self, teacher: nn.Module, imgs: torch.Tensor,
                 batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """The mean of each item's N cached rows (float32) and the teacher's eval-mode BNNeck
        and bias-free classifier of that mean, which equals the mean of per-frame logits."""
        if batch.teacher_rows is None:
            raise ValueError("cached teacher targets need the batch's teacher_rows (a loader "
                             "built with the targets' row function)")
        device = imgs.device
        with torch.autocast(device.type, enabled=False):
            t_emb = send(self.gather(batch.teacher_rows), device).mean(1)
            t_logits = teacher.classifier(teacher.bnneck(t_emb))
        return t_emb, t_logits


TeacherTargets = Any  # LiveTeacherTargets | CachedTeacherTargets (same methods)


def teacher_targets(cfg: Any, targets: str, tracklets: Sequence[Sequence]) -> TeacherTargets:
    """The targets ``DistillOptions.targets`` names: ``'live'`` or ``'cached'``."""
    if targets == "live":
        return LiveTeacherTargets()
    if targets == "cached":
        return CachedTeacherTargets(cfg, tracklets)
    raise ValueError(f"teacher targets {targets!r}: expected one of {TARGETS}")
