"""The datasets the loaders iterate: training items decoded from the sampler's frame specs,
and test items (tracklets sampled evenly or whole, or single images)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import numpy as np
from torch.utils.data import Dataset

from vkd_torchreid.data.base import evenly_indices
from vkd_torchreid.data.batch import Item
from vkd_torchreid.data.io import CorruptImageError, read_image, read_jpeg_bytes
from vkd_torchreid.data.sampler import IdentityIndex
from vkd_torchreid.data.transforms import TestFrameTransform, TrainFrameTransform

_READ_ERRORS = (CorruptImageError, FileNotFoundError)
#: ``rows(tracklets, frames, flips) -> rows``: int64 arrays of one shape, a flipped flag per
#: frame; the teacher cache's row of each frame (given by the cached teacher targets).
RowFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class TrainFrames(Dataset):
    """Decodes the frames of a batch sampler's item and applies the per-frame augmentation.

    Items are :data:`~vkd_torchreid.data.sampler.BatchItem` (a frame spec and the student's M
    positions among its N frames). Normally all N frames are decoded and ``student`` is passed
    on to the engine. With ``teacher_rows`` (the cached teacher targets' row function), only the
    student's M frames are decoded: every one of the N frames still gets its own flip draw, and
    the item carries the cache row of each (its flip state's row) in ``teacher_rows``.

    With ``skip_corrupt`` an unreadable frame is replaced by another frame of its tracklet
    (then of its identity) and its path is reported in ``skipped``; without it the error
    names the file.

    With ``jpeg_bytes`` (``data.decode_device cuda``) frames are not decoded here: the item
    carries each frame's JPEG file and its drawn geometry (crop offset, flip), drawn from the
    same RNG in the same order, for the consuming process to decode and augment on the GPU.
    """

    def __init__(self, tracklets: Sequence[Sequence], transform: TrainFrameTransform,
                 skip_corrupt: bool = False, teacher_rows: Optional[RowFunction] = None,
                 jpeg_bytes: bool = False) -> None:
        self.paths = [tuple(t[0]) for t in tracklets]
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.index = IdentityIndex(tracklets) if skip_corrupt else None
        self._bad: Set[str] = set()
        self.teacher_rows = teacher_rows
        self.jpeg_bytes = jpeg_bytes

    def __len__(self) -> int:
        return len(self.paths)

    def _replacement(self, pid: int, t: int) -> np.ndarray:
        """Another readable frame of tracklet ``t``, else of identity ``pid``."""
        assert self.index is not None
        others = [x for x in np.random.permutation(self.index.tracklets[pid]) if x != t]
        for cand in [t, *others]:
            for f in np.random.permutation(len(self.paths[cand])):
                path = self.paths[cand][f]
                if path in self._bad:
                    continue
                try:
                    return read_image(path)
                except _READ_ERRORS:
                    self._bad.add(path)
        raise ValueError(f"identity {pid}: every frame of its {1 + len(others)} training "
                         f"tracklet(s) is unreadable (first: {self.paths[t][0]})")

    def _decode(self, pid: int, t: int, f: int, skipped: List[str]) -> np.ndarray:
        path = self.paths[t][f]
        try:
            if path in self._bad:
                raise CorruptImageError(path, "known to be unreadable")
            return read_image(path)
        except _READ_ERRORS:
            if not self.skip_corrupt:
                raise
            self._bad.add(path)
            skipped.append(path)
            return self._replacement(pid, t)

    def _frames(self, pid: int, refs: Sequence[Sequence[int]], flips: Sequence[Optional[bool]],
                skipped: List[str], item: Item) -> Item:
        """``item`` with the frames ``refs`` (each with its flip state, None: drawn): decoded
        and augmented, or, with ``jpeg_bytes``, their JPEG files and drawn geometry."""
        if not self.jpeg_bytes:
            item.img = np.stack([self.transform(self._decode(pid, t, f, skipped), flip=flip)
                                 for (t, f), flip in zip(refs, flips)])
            return item
        item.jpeg_paths = [self.paths[t][f] for t, f in refs]
        item.jpeg = [read_jpeg_bytes(p) for p in item.jpeg_paths]
        item.geometry = np.array([self.transform.draw_geometry(flip) for flip in flips],
                                 dtype=np.int64).reshape(-1, 3)
        item.img = np.zeros((len(refs), 0, 0, 3), dtype=np.uint8)
        return item

    def __getitem__(self, item: Sequence[Any]) -> Item:
        pid, camid, refs = item[:3]
        student = tuple(item[3]) if len(item) > 3 else ()
        skipped: List[str] = []
        if self.teacher_rows is None:
            return self._frames(pid, refs, [None] * len(refs), skipped,
                                Item(None, pid, camid, skipped, len(refs), student=student))
        if not student:
            raise ValueError("the teacher cache needs the sampler to draw the student's frames "
                             "(vkd.student_frames)")
        flips = [self.transform.draw_flip() for _ in refs]
        t, f = np.array(refs, dtype=np.int64).T
        rows = self.teacher_rows(t, f, np.array(flips, dtype=bool))
        return self._frames(pid, [refs[i] for i in student], [flips[i] for i in student],
                            skipped, Item(None, pid, camid, skipped, len(student),
                                          teacher_rows=rows))


class TestFrames(Dataset):
    """Test items: tracklets sampled evenly (N frames) or whole, or single images.

    Gives an :class:`~vkd_torchreid.data.batch.Item` with ``img`` uint8 ``[V, H, W, 3]``, V = N
    (``evenly``), the tracklet length (``all``) or 1 (image items), and its ``index``.
    """

    def __init__(self, items: Sequence[Sequence], transform: TestFrameTransform,
                 seq_len: int = 8, sample_method: str = "evenly") -> None:
        self.items = items
        self.transform = transform
        self.seq_len = seq_len
        self.sample_method = sample_method

    def __len__(self) -> int:
        return len(self.items)

    def frame_paths(self, index: int) -> List[str]:
        """The frame files item ``index`` decodes, in order."""
        paths = self.items[index][0]
        if isinstance(paths, str):
            return [paths]
        if self.sample_method == "all":
            return list(paths)
        return [paths[i] for i in evenly_indices(len(paths), self.seq_len)]

    def __getitem__(self, index: int) -> Item:
        _, pid, camid = self.items[index][:3]
        cache: Dict[str, np.ndarray] = {}
        frames = []
        for path in self.frame_paths(index):
            if path not in cache:  # short tracklets repeat their last frame: decode it once
                cache[path] = self.transform(read_image(path))
            frames.append(cache[path])
        return Item(np.stack(frames), pid, camid, index=index)
