"""What every VKD dataset shares: its splits, its evaluation protocol, strict file helpers,
and a torchreid ``VideoDataset`` base class that parses each root once.

A tracklet is ``(img_paths, pid, camid)`` with ``img_paths`` a tuple of file paths in
temporal order; an image item is ``(img_path, pid, camid)`` as in torchreid's image datasets.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from typing import Any, ClassVar, Dict, List, Sequence, Tuple

import numpy as np

from vkd_torchreid.compat import VideoDataset
from vkd_torchreid.data.io import read_image
from vkd_torchreid.data.layout import (  # noqa: F401  (the loaders import them from here)
    LayoutError,
    require_dir,
    require_file,
)

logger = logging.getLogger(__name__)

Tracklet = Tuple[Tuple[str, ...], int, int]
ImageItem = Tuple[str, int, int]

#: Values of ``video.sample_method``: a test tracklet is 8 evenly spread frames or all of them.
TEST_SAMPLE_METHODS = ("evenly", "all")
#: Evaluation modes: (query kind, gallery kind).
MODES: Dict[str, Tuple[str, str]] = {
    "I2V": ("query_img", "gallery"),
    "V2V": ("query", "gallery"),
    "I2I": ("query_img", "gallery_img"),
    "V2I": ("query", "gallery_img"),
}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a dataset is evaluated.

    Attributes:
        modes: which of I2V, V2V, I2I, V2I apply, in reporting order.
        query_in_gallery: append the query tracklets (and query images) to the gallery before
            ranking, as the reference does for MARS.
        junk: ``"same_camera"`` (gallery items of the query's identity and camera are junk)
            or ``"atrw"`` (ATRW's plain protocol; needs ``Splits.meta``).
        camera_ids: the items' ``camid`` are cameras (False for ATRW, whose are derived
            views or video groups).
    """

    modes: Tuple[str, ...]
    query_in_gallery: bool = False
    junk: str = "same_camera"
    camera_ids: bool = True

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown evaluation modes {bad}; expected some of {list(MODES)}")


@dataclasses.dataclass
class Splits:
    """The parsed content of one dataset root."""

    train: List[Tracklet]
    query: List[Tracklet]
    gallery: List[Tracklet]
    query_img: List[ImageItem]
    gallery_img: List[ImageItem]
    protocol: Protocol
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    def statistics(self) -> List[Dict[str, Any]]:
        """One row per split: ids, items, images and cameras."""
        rows = []
        for name in ("train", "query", "gallery", "query_img", "gallery_img"):
            items = getattr(self, name)
            if not items:
                continue
            frames = sum(len(p) if isinstance(p, tuple) else 1 for p, _, _ in items)
            rows.append({
                "split": name,
                "ids": len({pid for _, pid, _ in items}),
                "items": len(items),
                "images": frames,
                "cameras": len({cam for _, _, cam in items}),
            })
        return rows


# --------------------------------------------------------------------------- strict helpers

def read_lines(path: str) -> List[str]:
    """Non-empty, stripped lines of a text file."""
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def relabel(tracklets: Sequence[Tracklet]) -> List[Tracklet]:
    """Maps the pids of training tracklets to 0..P-1 in sorted order."""
    mapping = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in tracklets}))}
    return [(paths, mapping[pid], cam) for paths, pid, cam in tracklets]


def item_frames(item: Sequence) -> Tuple[str, ...]:
    """The frame files of a test item: a tracklet's, or an image item's one."""
    paths = item[0]
    return (paths,) if isinstance(paths, str) else tuple(paths)


def first_frames(tracklets: Sequence[Tracklet]) -> List[ImageItem]:
    """The first frame of each tracklet as an image item (the paper's I2V queries)."""
    return [(paths[0], pid, cam) for paths, pid, cam in tracklets]


def all_frames(tracklets: Sequence[Tracklet]) -> List[ImageItem]:
    """Every frame of every tracklet as an image item."""
    return [(p, pid, cam) for paths, pid, cam in tracklets for p in paths]


# --------------------------------------------------------------------------- frame selection

def evenly_indices(num_frames: int, n: int) -> np.ndarray:
    """First frame of each of ``n`` equal chunks (the reference's test-time sampling).

    Short tracklets repeat their last frame. Returns ``n`` indices in ``[0, num_frames)``.
    """
    if num_frames < 1:
        raise ValueError("a tracklet needs at least one frame")
    if num_frames < n:
        return np.concatenate([np.arange(num_frames), np.full(n - num_frames, num_frames - 1)])
    interval = math.ceil(num_frames / n)
    return np.minimum(np.arange(n) * interval, num_frames - 1)


def random_chunk_indices(num_frames: int, n: int, rng: Any = np.random) -> np.ndarray:
    """One random frame from each of ``n`` equal chunks (the reference's training sampling).

    ``rng`` is ``numpy.random`` or a ``RandomState`` (anything with ``randint``).
    """
    if num_frames < n:
        return evenly_indices(num_frames, n)
    interval = math.ceil(num_frames / n)
    idx = np.arange(n) * interval + rng.randint(0, interval, size=n)
    return np.minimum(idx, num_frames - 1)


# --------------------------------------------------------------------------- dataset base

_CACHE: Dict[Tuple[Any, ...], Splits] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forgets every parsed dataset root (tests that rewrite a root call this)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class VKDVideoDataset(VideoDataset):
    """Base class of our datasets: torchreid's VideoDataset with image items and a protocol.

    Subclasses set ``dataset_dir`` and ``LAYOUT`` and implement :meth:`parse`. torchreid builds
    a dataset three times per data manager (train, query, gallery); the parse runs once per
    root and options.

    Args:
        root: the parent folder that holds ``dataset_dir`` (torchreid's ``data.root``).
        mode: ``train``, ``query`` or ``gallery``.
        transform: torchreid's per-frame PIL transform (only used by ``__getitem__``, i.e. when
            the dataset is driven by torchreid's own data manager).
        seq_len, sample_method: torchreid's test-time frame sampling.
        **options: dataset options (``mars_query_in_gallery``, ``atrw_views``); torchreid's
            other keyword arguments are accepted and ignored.
    """

    dataset_dir: ClassVar[str] = ""
    #: The name it is registered under (``vkd_mars``; set by ``register_dataset``).
    NAME: ClassVar[str] = ""
    LAYOUT: ClassVar[str] = ""
    OPTIONS: ClassVar[Tuple[str, ...]] = ()
    #: Random-erasing aspect ratios for this kind of target (people by default).
    ERASE_RATIO: ClassVar[Tuple[float, float]] = (0.3, 3.3)
    #: The frames' file format ('jpeg' allows ``data.decode_device cuda``; '' unknown).
    FRAME_FORMAT: ClassVar[str] = ""
    #: Default input size (height, width).
    INPUT_SIZE: ClassVar[Tuple[int, int]] = (256, 128)

    def __init__(
        self,
        root: str = "",
        mode: str = "train",
        transform: Any = None,
        seq_len: int = 8,
        sample_method: str = "evenly",
        verbose: bool = True,
        **kwargs: Any,
    ) -> None:
        options = {k: kwargs.pop(k) for k in self.OPTIONS if k in kwargs}
        for ignored in ("combineall", "split_id", "k_tfm"):
            kwargs.pop(ignored, None)
        self.splits = self.load(root, **options)
        self.query_img = self.splits.query_img
        self.gallery_img = self.splits.gallery_img
        self.protocol = self.splits.protocol
        super().__init__(
            self.splits.train, self.splits.query, self.splits.gallery,
            transform=transform if transform is not None else _identity,
            mode=mode, seq_len=seq_len, sample_method=sample_method, verbose=verbose, **kwargs,
        )

    @classmethod
    def load(cls, root: str, **options: Any) -> Splits:
        """Parses ``root`` once per process and options; later calls return the same Splits."""
        root = os.path.abspath(os.path.expanduser(root or "."))
        base = os.path.join(root, cls.dataset_dir)
        try:
            return cls._load(root, base, **options)
        except LayoutError as exc:
            raise exc.of(cls.NAME or cls.__name__, root) from None

    @classmethod
    def _load(cls, root: str, base: str, **options: Any) -> Splits:
        require_dir(base, cls.LAYOUT)
        key = (cls.__module__, cls.__qualname__, base, os.stat(base).st_mtime_ns,
               tuple(sorted(options.items())))
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
        if cached is not None:
            return cached
        splits = cls.parse(base, **options)
        for name in ("train", "query", "gallery"):
            if not getattr(splits, name):
                raise LayoutError(f"{base}: the {name} split is empty", cls.LAYOUT)
        logger.info("parsed %s at %s: %s", cls.__name__, base, splits.statistics())
        with _CACHE_LOCK:
            _CACHE[key] = splits
        return splits

    @classmethod
    def parse(cls, dataset_dir: str, **options: Any) -> Splits:
        """Reads the dataset at ``dataset_dir`` (``root/dataset_dir``)."""
        raise NotImplementedError

    def show_summary(self) -> None:
        rows = self.splits.statistics()
        logger.info("=> Loaded %s", type(self).__name__)
        for r in rows:
            logger.info("  %-11s | %5d ids | %6d items | %7d images | %2d cameras",
                        r["split"], r["ids"], r["items"], r["images"], r["cameras"])

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """torchreid-compatible item: ``seq_len`` frames through torchreid's PIL transform."""
        import torch
        from PIL import Image

        img_paths, pid, camid, dsetid = self.data[index]
        if self.sample_method == "all":
            idx = np.arange(len(img_paths))
        else:
            idx = evenly_indices(len(img_paths), self.seq_len)
        frames = [self.transform(Image.fromarray(read_image(img_paths[i]))) for i in idx]
        return {"img": torch.stack(frames, 0), "pid": pid, "camid": camid, "dsetid": dsetid}


def _identity(x: Any) -> Any:
    return x
