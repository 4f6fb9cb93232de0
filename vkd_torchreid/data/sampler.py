"""Multi-view sampling: batches of P identities x K items, each item N frames.

A sampler yields *frame specs*, not dataset indices: an item is ``(pid, camid, frames)`` with
``frames`` a tuple of ``(tracklet_index, frame_index)`` pairs. The training dataset decodes
exactly those frames. Identities are indexed once, so the cost of an item does not grow with
the size of the dataset (the reference scans the whole training list for every item).

Strategies:
    ``tracklet``: N frames of one tracklet, one random frame per chunk (teacher stage).
    ``multiview``: N frames of one identity spread over as many cameras as it has
        (camera-balanced; each frame from a random tracklet of the chosen camera).
    ``multiview_random``: the reference's VKD sampling: the i-th frame comes from the
        i-th tracklet of a random permutation of the identity's tracklets (cameras ignored).
    ``temporal``: N frames of one random tracklet of the identity (views-versus-time ablation).

Our batch sampler draws from (seed, epoch) only: the identity order from (seed, epoch), the
items of the b-th batch's j-th identity from (seed, epoch, b, j), the student's M of N from
(seed, epoch, the item's index). So a resumed run draws what the uninterrupted one would, and
under torchrun every rank knows the global batch and takes its own P / world-size identities
of it (rank r the r-th share), which together are exactly the single process's batch.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
from torch.utils.data import Sampler

from vkd_torchreid.data.base import random_chunk_indices

logger = logging.getLogger(__name__)

FrameRef = Tuple[int, int]
#: One training item: (pid, camid of its first frame, N frame references).
FrameSpec = Tuple[int, int, Tuple[FrameRef, ...]]
#: What a batch sampler yields per item: a :data:`FrameSpec` plus the student's M positions
#: among the N frames (empty in the teacher stage).
BatchItem = Tuple[int, int, Tuple[FrameRef, ...], Tuple[int, ...]]
STRATEGIES = ("tracklet", "multiview", "multiview_random", "temporal")
#: Values of ``vkd.view_strategy`` (the student stage; the teacher stage uses ``tracklet``).
VIEW_STRATEGIES = ("multiview", "multiview_random", "temporal")
#: ``sampler.train_sampler`` of our sampler; torchreid's sampler names work through an adapter.
MULTIVIEW_SAMPLER = "MultiViewSampler"


class IdentityIndex:
    """Tracklets of every identity, and of every (identity, camera), built once.

    Args:
        data_source: tracklets ``(img_paths, pid, camid[, dsetid])``.
    """

    def __init__(self, data_source: Sequence[Sequence]) -> None:
        self.lengths = np.array([len(item[0]) for item in data_source], dtype=np.int64)
        self.camids = np.array([item[2] for item in data_source], dtype=np.int64)
        by_pid: Dict[int, List[int]] = defaultdict(list)
        by_pid_cam: Dict[int, Dict[int, List[int]]] = defaultdict(lambda: defaultdict(list))
        for index, item in enumerate(data_source):
            pid, camid = int(item[1]), int(item[2])
            by_pid[pid].append(index)
            by_pid_cam[pid][camid].append(index)
        self.pids = np.array(sorted(by_pid), dtype=np.int64)
        self.tracklets = {pid: np.array(v, dtype=np.int64) for pid, v in by_pid.items()}
        self.cameras = {
            pid: [np.array(cams[c], dtype=np.int64) for c in sorted(cams)]
            for pid, cams in by_pid_cam.items()
        }
        if (self.lengths < 1).any():
            bad = int(np.nonzero(self.lengths < 1)[0][0])
            raise ValueError(f"training tracklet {bad} has no frames")

    def num_cameras(self, pid: int) -> int:
        return len(self.cameras[pid])


def sample_item(index: IdentityIndex, pid: int, n: int, strategy: str,
                tracklet: int = -1, rand: Any = np.random) -> FrameSpec:
    """Draws one item of ``n`` frames of identity ``pid`` with ``strategy``.

    ``tracklet`` fixes the tracklet for the ``tracklet`` strategy (-1: a random one).
    ``rand``: ``numpy.random`` (the global RNG) or a ``RandomState``.
    """
    if strategy in ("tracklet", "temporal"):
        t = tracklet if tracklet >= 0 else int(rand.choice(index.tracklets[pid]))
        frames = random_chunk_indices(int(index.lengths[t]), n, rand)
        refs = tuple((t, int(f)) for f in frames)
    elif strategy == "multiview_random":
        perm = rand.permutation(index.tracklets[pid])
        chosen = perm[np.arange(n) % len(perm)]
        refs = tuple((int(t), int(rand.randint(index.lengths[t]))) for t in chosen)
    elif strategy == "multiview":
        cams = index.cameras[pid]
        order = rand.permutation(len(cams))
        refs_list = []
        # Cycle over the cameras in random order; within a camera, cycle over its tracklets.
        cursors = [rand.permutation(c) for c in cams]
        for i in range(n):
            c = int(order[i % len(cams)])
            pool = cursors[c]
            t = int(pool[(i // len(cams)) % len(pool)])
            refs_list.append((t, int(rand.randint(index.lengths[t]))))
        refs = tuple(refs_list)
    else:
        raise ValueError(f"unknown sampling strategy {strategy!r}; expected one of {STRATEGIES}")
    return pid, int(index.camids[refs[0][0]]), refs


def draw_rng(seed: int, *keys: int) -> np.random.RandomState:
    """A random state that is a function of ``seed`` and ``keys`` only."""
    return np.random.RandomState([seed % 2**32, *(k % 2**32 for k in keys)])


def student_pick(seed: int, epoch: int, index: int, n: int, m: int) -> Tuple[int, ...]:
    """Which ``m`` of an item's ``n`` frames the student sees, from (seed, epoch, the item's
    global index in the epoch) only: a resumed or distributed run draws the same, and the
    loader knows it before decoding (the teacher cache decodes only these). Empty when
    ``m`` is 0 (the teacher stage)."""
    if m <= 0:
        return ()
    rng = np.random.default_rng([seed, epoch, index])
    return tuple(int(i) for i in rng.permutation(n)[:m])


class _EpochBatchSampler(Sampler):
    """What both batch samplers share: the epoch (``set_epoch``) and the student's pick."""

    seq_len: int

    def __init__(self, student_frames: int = 0, seed: int = 0) -> None:
        self.student_frames = student_frames
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration draws for (the engine calls it before each epoch)."""
        self.epoch = epoch

    def _with_pick(self, spec: FrameSpec, index: int) -> BatchItem:
        return (*spec, student_pick(self.seed, self.epoch, index, self.seq_len,
                                    self.student_frames))


class MultiViewSampler(_EpochBatchSampler):
    """Batch sampler of P identities x K items, each item N frames (see module docstring).

    One epoch visits every identity once (``len = num_identities // P``), as the
    reference's ReIDBatchSampler. Identities seen by one camera or one tracklet work: their
    frames simply repeat cameras/tracklets.

    Args:
        data_source: training tracklets ``(img_paths, pid, camid[, dsetid])``.
        batch_size: P x K items of the global batch (every rank's share together).
        num_instances: K items per identity.
        seq_len: N frames per item.
        strategy: one of ``STRATEGIES``.
        student_frames: M, the student's frames of each item (0: teacher stage).
        seed: with the epoch, the batch and the item's index, draws everything.
        rank, world_size: this process's share: identities ``rank * P / world_size`` to
            ``(rank + 1) * P / world_size - 1`` of each global batch.
    """

    def __init__(self, data_source: Sequence[Sequence], batch_size: int, num_instances: int,
                 seq_len: int, strategy: str = "multiview_random", student_frames: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(student_frames, seed)
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}; expected one of {STRATEGIES}")
        if num_instances < 1 or batch_size % num_instances:
            raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                             f"num_instances={num_instances}")
        self.index = IdentityIndex(data_source)
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        if not 0 <= rank < world_size or self.num_pids_per_batch % world_size:
            raise ValueError(f"P={self.num_pids_per_batch} identities per batch must be "
                             f"divisible by the world size {world_size} (rank {rank})")
        self.rank, self.world_size = rank, world_size
        self.seq_len = seq_len
        self.strategy = strategy
        if len(self.index.pids) < self.num_pids_per_batch:
            raise ValueError(
                f"the training set has {len(self.index.pids)} identities, fewer than "
                f"P={self.num_pids_per_batch} identities per batch (train.batch_size / "
                f"sampler.num_instances)")

    def __len__(self) -> int:
        return len(self.index.pids) // self.num_pids_per_batch

    def _items_of(self, pid: int, rand: np.random.RandomState) -> List[FrameSpec]:
        k, n = self.num_instances, self.seq_len
        if self.strategy != "tracklet":
            return [sample_item(self.index, pid, n, self.strategy, rand=rand) for _ in range(k)]
        pool = self.index.tracklets[pid]
        chosen = rand.choice(pool, size=k, replace=len(pool) < k)
        return [sample_item(self.index, pid, n, "tracklet", int(t), rand) for t in chosen]

    def __iter__(self) -> Iterator[List[BatchItem]]:
        pids = draw_rng(self.seed, self.epoch).permutation(self.index.pids)
        p, k = self.num_pids_per_batch, self.num_instances
        share = p // self.world_size
        for b in range(len(self)):
            items: List[BatchItem] = []
            for j in range(self.rank * share, (self.rank + 1) * share):
                specs = self._items_of(int(pids[b * p + j]),
                                       draw_rng(self.seed, self.epoch, b, j))
                items += [self._with_pick(spec, (b * p + j) * k + i)
                          for i, spec in enumerate(specs)]
            yield items


class TrackletBatchSampler(_EpochBatchSampler):
    """Adapts one of torchreid's samplers (which yield tracklet indices) to frame specs.

    Each sampled tracklet becomes an item: its own frames (``tracklet``/``temporal``) or
    frames of its identity (``multiview``/``multiview_random``). Incomplete last batches are
    dropped, as torchreid's train loaders do.
    """

    def __init__(self, base: Sampler, data_source: Sequence[Sequence], batch_size: int,
                 seq_len: int, strategy: str, student_frames: int = 0, seed: int = 0) -> None:
        super().__init__(student_frames, seed)
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}; expected one of {STRATEGIES}")
        self.base = base
        self.index = IdentityIndex(data_source)
        self.pids = np.array([int(item[1]) for item in data_source], dtype=np.int64)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.strategy = strategy

    def __len__(self) -> int:
        return len(self.base) // self.batch_size

    def _spec(self, t: int) -> FrameSpec:
        pid = int(self.pids[t])
        if self.strategy == "tracklet":
            return sample_item(self.index, pid, self.seq_len, "tracklet", t)
        return sample_item(self.index, pid, self.seq_len, self.strategy)

    def __iter__(self) -> Iterator[List[BatchItem]]:
        batch: List[BatchItem] = []
        for i, t in enumerate(self.base):
            batch.append(self._with_pick(self._spec(int(t)), i))
            if len(batch) == self.batch_size:
                yield batch
                batch = []

