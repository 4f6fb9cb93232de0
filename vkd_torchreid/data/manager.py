"""The VKD data manager: multi-view training batches and the four test loaders.

Built on torchreid's ``VideoDataManager`` (same attributes: ``sources``, ``targets``,
``train_loader``, ``test_loader[name]['query'|'gallery']``, ``test_dataset``,
``num_train_pids``), plus ``test_loader[name]['query_img'|'gallery_img']`` and the protocol
of each target. Its constructor is not reused: it would parse every dataset again without
our options and build loaders we replace.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from vkd_torchreid.compat import VideoDataManager, build_train_sampler
from vkd_torchreid.compat import data as tr_data
from vkd_torchreid.data.base import MODES, Protocol, Splits
from vkd_torchreid.data.batch import Item
from vkd_torchreid.data.collate import FinishingLoader, TestCollate, TrainCollate
from vkd_torchreid.data.frames import RowFunction, TestFrames, TrainFrames
from vkd_torchreid.data.registry import dataset_class
from vkd_torchreid.data.sampler import (
    MULTIVIEW_SAMPLER,
    MultiViewSampler,
    TrackletBatchSampler,
)
from vkd_torchreid.data.transforms import AugmentOptions, TestFrameTransform, TrainFrameTransform
from vkd_torchreid.utils import distributed

#: What the data manager's loaders are: a DataLoader, or one wrapped to finish batches.
Loader = Union[DataLoader, FinishingLoader]

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """What a batch holds and how the loaders run (values from the config: :meth:`from_config`)."""

    stage: str  # 'teacher': N frames of one tracklet; 'student': view_strategy
    view_strategy: str
    train_sampler: str
    batch_size: int  # P x K items
    num_instances: int  # K
    seq_len: int  # N
    test_seq_len: int  # frames per test tracklet ('evenly')
    test_batch_size: int
    sample_method: str  # test time: 'evenly' or 'all'
    workers: int
    skip_corrupt: bool
    student_frames: int  # M drawn by the sampler for the student stage (0: teacher stage)
    seed: int  # with the epoch and the item's index, draws the student's M frames
    decode_device: str = "cpu"  # training frames: decoded by the workers, or JPEG bytes

    @classmethod
    def from_config(cls, cfg: Any) -> SamplingOptions:
        return cls(
            stage=cfg.vkd.stage, view_strategy=cfg.vkd.view_strategy,
            train_sampler=cfg.sampler.train_sampler, batch_size=cfg.train.batch_size,
            num_instances=cfg.sampler.num_instances, seq_len=cfg.video.seq_len,
            test_seq_len=cfg.video.test_seq_len or cfg.video.seq_len,
            test_batch_size=cfg.test.batch_size, sample_method=cfg.video.sample_method,
            workers=cfg.data.workers, skip_corrupt=cfg.data.skip_corrupt,
            student_frames=cfg.vkd.student_frames if cfg.vkd.stage == "student" else 0,
            seed=cfg.train.seed, decode_device=cfg.data.decode_device)

    @property
    def strategy(self) -> str:
        return "tracklet" if self.stage == "teacher" else self.view_strategy


def make_loader(dataset: Any, augment: AugmentOptions,
                erase_ratio: Optional[Tuple[float, float]], workers: int, pin_memory: bool,
                on_device: bool = False, **kwargs: Any) -> Loader:
    """A DataLoader of ``dataset``: a training one when ``erase_ratio`` is given (random
    erasing), else a test one. With workers, they send uint8 frames and the batch is
    normalised (and erased) in the consuming process: 4x less inter-process traffic; with
    ``on_device`` (CUDA) the uint8 batch crosses to the device (pinned, non-blocking) and is
    finished there (:meth:`~vkd_torchreid.data.batch.Batch.device_images`). Training loaders
    are always a :class:`FinishingLoader` (its ``set_epoch`` reaches the sampler)."""
    train = erase_ratio is not None
    defer = workers > 0 or on_device
    collate = (TrainCollate(augment, erase_ratio, defer=defer) if train
               else TestCollate(augment, defer=defer))
    if workers > 0:
        kwargs.update(persistent_workers=train, prefetch_factor=2)
    loader = DataLoader(dataset, num_workers=workers, pin_memory=pin_memory,
                        collate_fn=collate, **kwargs)
    return FinishingLoader(loader, collate, on_device) if defer or train else loader


def test_loader(items: Sequence[Sequence], tracklets: bool, augment: AugmentOptions,
                sampling: SamplingOptions, pin_memory: bool = False,
                sample_method: str = "", on_device: bool = False) -> Optional[Loader]:
    """The test loader of ``items`` (tracklets, or image items); None when empty. Tracklets
    give ``sampling.test_seq_len`` frames sampled with ``sample_method`` (default:
    ``sampling.sample_method``); with ``all``, one tracklet per batch (variable length)."""
    if not items:
        return None
    method = (sample_method or sampling.sample_method) if tracklets else "evenly"
    dataset = TestFrames(items, TestFrameTransform(augment), sampling.test_seq_len, method)
    batch = 1 if tracklets and method == "all" else sampling.test_batch_size
    return make_loader(dataset, augment, None, sampling.workers, pin_memory, on_device,
                       batch_size=batch, shuffle=False, drop_last=False)


class VKDDataManager(VideoDataManager):
    """Data manager for both VKD stages.

    Args:
        root: ``data.root``, the folder holding the dataset folders.
        sources: training dataset name(s) (``vkd_mars``...).
        targets: test dataset name(s); default: the sources.
        augment: input size and augmentation (see :meth:`AugmentOptions.from_config`).
        sampling: batch composition and loader settings.
        dataset_options: options of our datasets (``mars_query_in_gallery``, ``atrw_views``,
            ``duke_tracklets``, ``veri_query_track``, ``veri_image_gallery``).
        use_gpu: CUDA: pinned batches, finished on the device.
    """

    data_type = "video"

    def __init__(self, root: str, sources: Union[str, Sequence[str]],
                 targets: Union[str, Sequence[str], None],
                 augment: AugmentOptions, sampling: SamplingOptions,
                 dataset_options: Optional[Dict[str, Any]] = None,
                 use_gpu: bool = True) -> None:
        tr_data.datamanager.DataManager.__init__(
            self, sources=list([sources] if isinstance(sources, str) else sources),
            targets=None if targets is None else list([targets] if isinstance(targets, str)
                                                      else targets),
            height=augment.height, width=augment.width, norm_mean=list(augment.norm_mean),
            norm_std=list(augment.norm_std), use_gpu=use_gpu)
        self.root = root
        self.augment = augment
        self.sampling = sampling
        self.dataset_options = dict(dataset_options or {})
        self.splits: Dict[str, Splits] = {}
        self.protocols: Dict[str, Protocol] = {}

        train = self._combined_train(self.sources)
        self.train_tracklets = train
        self._num_train_pids = len({pid for _, pid, _ in train})
        self._num_train_cams = len({cam for _, _, cam in train})
        first = self._dataset_class(self.sources[0])
        self.erase_ratio = augment.erase_ratio or first.ERASE_RATIO
        # built on first use (evaluation never needs one): one per teacher-row function
        self._train: Dict[Optional[RowFunction], FinishingLoader] = {}

        self.test_loader: Dict[str, Dict[str, Optional[Loader]]] = {}
        self.test_dataset: Dict[str, Dict[str, Any]] = {}
        for name in self.targets:
            self._add_target(name)

    # ------------------------------------------------------------------ datasets
    @staticmethod
    def _dataset_class(name: str) -> type:
        return dataset_class(name)

    def _load(self, name: str) -> Splits:
        if name not in self.splits:
            cls = self._dataset_class(name)
            opts = {k: v for k, v in self.dataset_options.items() if k in cls.OPTIONS}
            self.splits[name] = cls.load(self.root, **opts)
        return self.splits[name]

    def _combined_train(self, names: Sequence[str]) -> List[tuple]:
        """Training tracklets of all sources, pids and cameras offset per source."""
        combined: List[tuple] = []
        pid_offset = cam_offset = 0
        for name in names:
            train = self._load(name).train
            combined.extend((p, pid + pid_offset, cam + cam_offset) for p, pid, cam in train)
            pid_offset += len({pid for _, pid, _ in train})
            cam_offset += len({cam for _, _, cam in train})
        return combined

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Any, train: bool, **kwargs: Any) -> Loader:
        return make_loader(dataset, self.augment, self.erase_ratio if train else None,
                           self.sampling.workers, self.use_gpu, self.use_gpu, **kwargs)

    @property
    def train_loader(self) -> FinishingLoader:
        """The multi-view training loader (all N frames of each item), built on first access
        (an evaluation-only run never builds it, so train-time settings cannot stop it)."""
        return self.train_loader_for(None)

    def train_loader_for(self, teacher_rows: Optional[RowFunction]) -> FinishingLoader:
        """The training loader; with ``teacher_rows`` (the cached teacher targets' row
        function) its items decode only the student's frames and carry the teacher cache's
        rows (see :class:`~vkd_torchreid.data.frames.TrainFrames`). Built once per row
        function (equal functions share a loader)."""
        if teacher_rows not in self._train:
            self._train[teacher_rows] = self._train_loader(self.train_tracklets, teacher_rows)
        return self._train[teacher_rows]

    def _train_loader(self, train: List[tuple],
                      teacher_rows: Optional[RowFunction] = None) -> FinishingLoader:
        s = self.sampling
        if s.train_sampler == MULTIVIEW_SAMPLER:
            ctx = distributed.context()  # under torchrun: this rank's share of each batch
            batch_sampler = MultiViewSampler(train, s.batch_size, s.num_instances, s.seq_len,
                                             s.strategy, s.student_frames, s.seed,
                                             ctx.rank, ctx.world_size)
        else:
            base = build_train_sampler([(*t, 0) for t in train], s.train_sampler,
                                       batch_size=s.batch_size, num_instances=s.num_instances)
            batch_sampler = TrackletBatchSampler(base, train, s.batch_size, s.seq_len, s.strategy,
                                                 s.student_frames, s.seed)
        dataset = TrainFrames(train, TrainFrameTransform(self.augment), s.skip_corrupt,
                              teacher_rows, jpeg_bytes=s.decode_device == "cuda")
        return self._loader(dataset, True, batch_sampler=batch_sampler)

    def test_loader_of(self, items: Sequence[Sequence], tracklets: bool,
                       sample_method: str = "") -> Optional[Loader]:
        """A test loader of ``items`` (see :func:`test_loader`)."""
        return test_loader(items, tracklets, self.augment, self.sampling, self.use_gpu,
                           sample_method, on_device=self.use_gpu)

    def gallery_items(self, name: str, g_kind: str) -> List[Any]:
        """The gallery items of a protocol of dataset ``name`` in ranking (distance-matrix
        column) order: MARS' query items first when the dataset puts them back into the
        gallery."""
        items = self.test_dataset[name]
        gallery = list(items[g_kind] or [])
        if self.protocols[name].query_in_gallery:
            gallery = list(items["query" if g_kind == "gallery" else "query_img"] or []) + gallery
        return gallery

    def _add_target(self, name: str) -> None:
        splits = self._load(name)
        self.protocols[name] = splits.protocol
        needed = {kind for mode in splits.protocol.modes for kind in MODES[mode]}
        self.test_loader[name] = {
            kind: self.test_loader_of(getattr(splits, kind), tracklets=not kind.endswith("_img"))
            if kind in needed else None
            for kind in ("query", "gallery", "query_img", "gallery_img")
        }
        self.test_dataset[name] = {
            kind: getattr(splits, kind) for kind in ("query", "gallery", "query_img", "gallery_img")
        }

    def fetch_test_loaders(self, name: str) -> tuple:
        """torchreid's seam for visrank: (query items, gallery items)."""
        return self.test_dataset[name]["query"], self.test_dataset[name]["gallery"]

    def test_meta(self, name: str) -> Dict[str, Any]:
        """Dataset-specific test metadata (ATRW's frame groups), possibly empty."""
        return self.splits[name].meta

    def preprocess_pil_img(self, img: Any) -> torch.Tensor:
        """A PIL/array image -> normalised ``[3, H, W]`` test tensor (torchreid's seam)."""
        arr = TestFrameTransform(self.augment)(np.asarray(img.convert("RGB") if hasattr(
            img, "convert") else img))
        batch = TestCollate(self.augment)([Item(arr[None], -1, -1)])
        return batch.img[0, 0].contiguous()


    @classmethod
    def from_config(cls, cfg: Any) -> VKDDataManager:
        """The data manager of a config (``data``, ``sampler``, ``video``, ``train``, ``test``
        and ``vkd`` sections)."""
        d = cfg.data
        return cls(root=d.root, sources=list(d.sources), targets=list(d.targets) or None,
                   augment=AugmentOptions.from_config(cfg),
                   sampling=SamplingOptions.from_config(cfg),
                   dataset_options={"mars_query_in_gallery": d.mars_query_in_gallery,
                                    "atrw_views": d.atrw_views,
                                    "duke_tracklets": d.duke_tracklets,
                                    "veri_query_track": d.veri_query_track,
                                    "veri_image_gallery": d.veri_image_gallery,
                                    "split_id": d.split_id},
                   use_gpu=bool(cfg.use_gpu) and torch.cuda.is_available())


def build_datamanager(cfg: Any) -> VKDDataManager:
    """A :class:`VKDDataManager` from a config (:meth:`VKDDataManager.from_config`)."""
    return VKDDataManager.from_config(cfg)
