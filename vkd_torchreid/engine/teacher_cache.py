"""A teacher-feature cache: the frozen teacher's per-frame pooled feature of every training frame
(and of its horizontal flip), computed once and read by every student epoch.

With eval-mode BatchNorm the teacher is a pure function of each frame: its set embedding is the
mean of per-frame features and its logits an affine map of that mean (BNNeck in eval mode, a
bias-free classifier), so the rows of an item's N frames give both distillation targets.

On disk, under ``<vkd.teacher_cache_dir>/<key digest>/``:

- ``features.f16``: a raw float16 array ``[rows, D]``, every training frame in order (tracklet by
  tracklet), each followed by its horizontal flip when flips are cached; the row of a frame is
  given by :class:`vkd_torchreid.engine.targets.CacheRows` (the one copy of that formula);
- ``manifest.json``: the key (what the features depend on), the shape, and the size,
  modification time and SHA-256 of the features file; written last, atomically: a build that
  is interrupted (an error, SIGINT/SIGTERM, a kill) leaves no manifest, and a folder without a
  valid manifest is never trusted.

Every start checks a cache cheaply (key, shape, size and modification time from the manifest);
``vkd.teacher_cache_verify full`` also recomputes its SHA-256 (the builder's rank only). A cache
that does not match is rebuilt (one log line says why); a valid one is only read, never
rewritten.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vkd_torchreid.config.defaults import TEACHER_CACHE_VERIFY
from vkd_torchreid.data.transforms import AugmentOptions
from vkd_torchreid.engine.cache_embed import (  # noqa: F401  (BuildInterrupted: part of its API)
    BuildInterrupted,
    Frames,
    embed_frames,
    stack_frames,
)
from vkd_torchreid.utils.hashing import state_hash
from vkd_torchreid.utils.jsonio import read_json, write_json

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FEATURES_FILE = "features.f16"
MANIFEST_FILE = "manifest.json"
#: Bumped when :func:`vkd_torchreid.data.transforms.resize` changes its output.
RESIZE_VERSION = "pillow-bicubic-1"
_HASH_CHUNK = 1 << 24


class CacheError(OSError):
    """The cache cannot be built (not enough free disk space, a folder that cannot be written,
    an I/O error); the message is one line naming the path. An ``OSError``: the commands
    report it as one ``error:`` line."""


def frames_hash(tracklets: Sequence[Sequence]) -> str:
    """SHA-256 of the training frame list: paths, sizes and modification times, in order."""
    h = hashlib.sha256()
    for paths, *_ in tracklets:
        for path in paths:
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """Everything the cached features depend on; two runs with equal keys share a cache."""

    teacher: str  # state hash of the teacher
    arch: str
    last_stride: int
    feature_dim: int
    datasets: Tuple[str, ...]
    frames: str  # frames_hash of the training frame list
    height: int
    width: int
    norm_mean: Tuple[float, ...]
    norm_std: Tuple[float, ...]
    resize: str
    flip: bool
    precision: str  # autocast mode of the build ('' is float32)
    format: int = FORMAT_VERSION

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_config(cls, cfg: Any, teacher: nn.Module, tracklets: Sequence[Sequence]) -> CacheKey:
        """The key of ``teacher``'s features of ``tracklets`` with the config's input settings
        (``data``: sources, size, normalisation; ``vkd.teacher_cache_flip``; ``train.amp``)."""
        d = cfg.data
        return cls(teacher=state_hash(teacher), arch=teacher.arch,
                   last_stride=teacher.last_stride, feature_dim=teacher.feature_dim,
                   datasets=tuple(d.sources), frames=frames_hash(tracklets), height=d.height,
                   width=d.width, norm_mean=tuple(d.norm_mean), norm_std=tuple(d.norm_std),
                   resize=RESIZE_VERSION, flip=cfg.vkd.teacher_cache_flip,
                   precision=cfg.train.amp)

    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class TeacherCache:
    """Read access to a built cache (see the module docstring).

    Attributes:
        offsets: ``[T]`` first frame row (before the flip factor) of each training tracklet.
        flip: whether flipped frames have rows of their own.
        features: the ``[rows, D]`` float16 memory map (or array).
    """

    def __init__(self, folder: str, offsets: np.ndarray, flip: bool, rows: int,
                 dim: int) -> None:
        self.folder = folder
        self.offsets = offsets
        self.flip = flip
        self.features: Any = np.memmap(os.path.join(folder, FEATURES_FILE), dtype=np.float16,
                                       mode="r", shape=(rows, dim))

    @classmethod
    def in_memory(cls, features: np.ndarray, offsets: np.ndarray, flip: bool) -> TeacherCache:
        """A cache over an array already in memory (benchmarks, tests)."""
        cache = cls.__new__(cls)
        cache.folder, cache.offsets, cache.flip = "", np.asarray(offsets), flip
        cache.features = np.asarray(features, dtype=np.float16)
        return cache

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 features ``[..., D]`` of ``rows`` (an int64 tensor of any shape)."""
        flat = np.asarray(rows.cpu()).reshape(-1)
        out = torch.from_numpy(np.asarray(self.features[flat], dtype=np.float32))
        return out.view(*rows.shape, -1)


def frame_offsets(tracklets: Sequence[Sequence]) -> np.ndarray:
    """``[T]`` int64: the index of each tracklet's first frame among all training frames."""
    lengths = np.array([len(t[0]) for t in tracklets], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _valid(folder: str, key: CacheKey, rows: int, dim: int, verify: str = "cheap"
           ) -> Optional[str]:
    """None if ``folder`` holds a usable cache for ``key``, else why not. ``verify``: 'cheap'
    (key, shape, size and modification time) or 'full' (also the SHA-256 of the features)."""
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    features = os.path.join(folder, FEATURES_FILE)
    if not os.path.isfile(manifest_path):
        return "no manifest (never built, or an interrupted build)"
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as exc:  # its message names the file, with line and column
        return f"unreadable manifest ({exc})"
    if not isinstance(manifest, dict):
        return f"unreadable manifest ({manifest_path} holds no mapping)"
    if manifest.get("key") != key.as_dict():
        return "its key differs (teacher, data, input or format changed)"
    if manifest.get("shape") != [rows, dim] or manifest.get("dtype") != "float16":
        return f"shape/dtype {manifest.get('shape')}/{manifest.get('dtype')} != {[rows, dim]}"
    if not os.path.isfile(features) or os.path.getsize(features) != rows * dim * 2:
        size = os.path.getsize(features) if os.path.isfile(features) else "missing"
        return f"features file size {size} != {rows * dim * 2} bytes (truncated?)"
    # manifests of older versions record no modification time: their checksum decides
    if verify == "full" or "mtime_ns" not in manifest:
        if file_hash(features) != manifest.get("sha256"):
            return "features file checksum differs (corrupted)"
    elif os.stat(features).st_mtime_ns != manifest["mtime_ns"]:
        return "features file modified since its build (its modification time differs)"
    return None


def usable(key: CacheKey, tracklets: Sequence[Sequence], root: str) -> bool:
    """Whether ``root`` holds a cache of ``key`` that the cheap check accepts (no build
    needed)."""
    rows = sum(len(t[0]) for t in tracklets) * (2 if key.flip else 1)
    return _valid(os.path.join(root, key.digest()), key, rows, key.feature_dim) is None


def check_writable(root: str) -> None:
    """Raises :class:`CacheError` when a cache cannot be written under ``root`` (which may not
    exist yet: its nearest existing folder is tried with a temporary file, removed at once)."""
    folder = os.path.abspath(root)
    while not os.path.isdir(folder):
        if os.path.lexists(folder):
            raise CacheError(f"the teacher cache cannot be written to {root}: {folder} is a "
                             "file, not a folder; set vkd.teacher_cache_dir to a writable folder")
        folder = os.path.dirname(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CacheError(f"the teacher cache cannot be written to {root}: {folder} is not "
                         f"writable ({exc.strerror or exc}); set vkd.teacher_cache_dir to a "
                         "writable folder") from exc


def _check_disk(folder: str, needed: int) -> None:
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CacheError(f"the teacher cache needs {needed:,} bytes in {folder} but only "
                         f"{free:,} are free; free some space or set vkd.teacher_cache_dir")


def open_or_build(teacher: nn.Module, tracklets: Sequence[Sequence], key: CacheKey,
                  root: str, options: AugmentOptions, device: torch.device, amp: str = "",
                  channels_last: bool = False, workers: int = 0, batch_size: int = 64,
                  progress: bool = False, build: bool = True, verify: str = "cheap",
                  stop: Optional[Callable[[], bool]] = None) -> TeacherCache:
    """The cache of ``key`` under ``root``: reused when valid, otherwise (re)built.

    ``teacher`` must be in eval mode (its BatchNorm uses running statistics). ``build=False``
    (the other ranks of a distributed run, after rank 0 built it) only opens a valid cache.
    ``verify``: how a cache is checked before reuse, one of :data:`TEACHER_CACHE_VERIFY`
    (see :func:`_valid`). ``stop``: polled before every batch of a build.

    Raises:
        CacheError: not enough free disk space, an OS error during the build (naming the
            path), or no valid cache to open with ``build=False``.
        BuildInterrupted: ``stop()`` became true; nothing of the build is left to reuse.
    """
    if verify not in TEACHER_CACHE_VERIFY:
        raise ValueError(f"verify={verify!r}: expected one of {TEACHER_CACHE_VERIFY}")
    if teacher.training:
        raise ValueError("the teacher cache needs an eval-mode teacher (vkd.teacher_bn eval)")
    folder = os.path.join(root, key.digest())
    offsets = frame_offsets(tracklets)
    frames = [p for paths, *_ in tracklets for p in paths]
    factor = 2 if key.flip else 1
    rows, dim = len(frames) * factor, key.feature_dim
    why = _valid(folder, key, rows, dim, verify)
    if why is None:
        logger.info("teacher cache reused: %s (key %s, %d rows x %d)", folder, key.digest(),
                    rows, dim)
        return TeacherCache(folder, offsets, key.flip, rows, dim)
    if not build:
        raise CacheError(f"the teacher cache that rank 0 built is not usable here: {folder}: "
                         f"{why}; put vkd.teacher_cache_dir (default: inside data.save_dir) on "
                         "a filesystem that every machine of the run shares")
    logger.info("teacher cache %s must be built: %s", folder, why)
    try:
        _build(teacher, frames, key, folder, rows, options, device, amp, channels_last, workers,
               batch_size, progress, stop)
    except CacheError:
        raise
    except OSError as exc:
        raise CacheError(f"the teacher cache build failed: {exc.filename or folder}: "
                         f"{exc.strerror or exc}; set vkd.teacher_cache_dir to a writable "
                         "folder with enough space") from exc
    logger.info("teacher cache built: %s (key %s)", folder, key.digest())
    return TeacherCache(folder, offsets, key.flip, rows, dim)


def _build(teacher: nn.Module, frames: List[str], key: CacheKey, folder: str, rows: int,
           options: AugmentOptions, device: torch.device, amp: str, channels_last: bool,
           workers: int, batch_size: int, progress: bool,
           stop: Optional[Callable[[], bool]]) -> None:
    """Writes ``features.f16`` then, last, the manifest (see :func:`open_or_build`)."""
    dim = key.feature_dim
    needed = rows * dim * 2
    _check_disk(os.path.dirname(folder), needed)
    logger.info("building the teacher cache: %d frames%s, %.2f GB", len(frames),
                " and their flips" if key.flip else "", needed / 1e9)
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # invalid: it must never vouch for the new file
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{FEATURES_FILE}.tmp-{os.getpid()}")
    features = os.path.join(folder, FEATURES_FILE)
    loader = DataLoader(Frames(frames, options.height, options.width), batch_size=batch_size,
                        num_workers=workers, collate_fn=stack_frames, shuffle=False,
                        pin_memory=device.type == "cuda")
    try:
        out = np.memmap(tmp, dtype=np.float16, mode="w+", shape=(rows, dim))
        for _ in embed_frames(teacher, loader, options, device, amp, channels_last, key.flip, out,
                        progress, stop):
            pass
        out.flush()
        del out
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, features)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    st = os.stat(features)
    write_json({"key": key.as_dict(), "shape": [rows, dim], "dtype": "float16",
                "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "sha256": file_hash(features)}, manifest_path)
