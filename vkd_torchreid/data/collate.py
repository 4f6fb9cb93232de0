"""From items to batches, and where a batch is finished.

The collate functions stack :class:`~vkd_torchreid.data.batch.Item` s into a
:class:`~vkd_torchreid.data.batch.Batch` of uint8 frames. Finishing (normalisation, and in
training random erasing) happens either on the CPU in the consuming process
(:meth:`TestCollate.finish`), or on the device where the network runs
(:meth:`TestCollate.for_device`: the erasing boxes are drawn here, on the CPU, from the same
RNG in the same order, and applied on the device by :meth:`Batch.device_images`). Either way a
run draws the same augmentations.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Tuple

import torch

from vkd_torchreid.data.batch import Batch, DeviceWork, Item, stack_items, unpack_bytes
from vkd_torchreid.data.transforms import (
    AugmentOptions,
    draw_erase_boxes,
    normalize_batch,
    random_erase_,
)


class TestCollate:
    """Stacks test items into a batch and normalises it.

    With ``defer``, ``img`` stays uint8 ``[B, V, H, W, 3]`` (4x less data between loader
    workers and the consuming process) until :meth:`finish` or :meth:`for_device`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, options: AugmentOptions, defer: bool = False) -> None:
        self.options = options
        self.defer = defer

    def finish(self, batch: Batch) -> Batch:
        """Normalises a batch whose ``img`` is still uint8, on the CPU (a finished batch is
        returned as it is)."""
        if not batch.finished:
            o = self.options
            batch.img = normalize_batch(batch.img, o.norm_mean, o.norm_std)
        return batch

    def _work(self, batch: Batch) -> DeviceWork:
        o = self.options
        jpeg = None if batch.jpeg is None else unpack_bytes(batch.jpeg, batch.jpeg_sizes)
        return DeviceWork(tuple(o.norm_mean), tuple(o.norm_std), jpeg=jpeg,
                          jpeg_paths=batch.jpeg_paths, geometry=batch.geometry,
                          size=(o.height, o.width), pad=o.pad)

    def for_device(self, batch: Batch) -> Batch:
        """Leaves the batch's frames uint8 (or JPEG bytes) and records what is left to do on
        the device (:meth:`Batch.device_images`)."""
        if not batch.finished and batch.work is None:
            batch.work = self._work(batch)
            batch.jpeg = batch.jpeg_sizes = batch.geometry = None
            batch.jpeg_paths = []
        return batch

    def __call__(self, items: List[Item]) -> Batch:
        batch = stack_items(items)
        return batch if self.defer or batch.jpeg is not None else self.finish(batch)


class TrainCollate(TestCollate):
    """Stacks training items into a batch, normalises it and erases boxes at random
    (``data.random_erase_*``, the box's aspect ratio drawn in ``erase_ratio``)."""

    def __init__(self, options: AugmentOptions, erase_ratio: Tuple[float, float],
                 defer: bool = False) -> None:
        super().__init__(options, defer)
        self.erase_ratio = erase_ratio

    def finish(self, batch: Batch) -> Batch:
        if not batch.finished:
            o = self.options
            batch.img = normalize_batch(batch.img, o.norm_mean, o.norm_std)
            random_erase_(batch.img, o.erase_prob, o.erase_scale, self.erase_ratio,
                          ratio_dist=o.erase_ratio_dist)
        return batch

    def _work(self, batch: Batch) -> DeviceWork:
        o = self.options
        work = super()._work(batch)
        frames = batch.img.shape[0] * batch.img.shape[1]
        work.erase = torch.from_numpy(draw_erase_boxes(
            frames, o.height, o.width, o.erase_prob, o.erase_scale, self.erase_ratio,
            o.erase_ratio_dist))
        return work


class FinishingLoader:
    """A DataLoader whose batches are finished in the consuming process: normalised (and
    erased in training) on the CPU, or, with ``on_device``, prepared to be finished on the
    device (:meth:`TestCollate.for_device`). Its workers (if any) deliver uint8 batches.

    It exposes what the engines use: ``len``, iteration, ``dataset``, ``batch_sampler``,
    ``num_workers`` and :meth:`set_epoch`, which passes the epoch to the batch sampler (whose
    draws depend on the seed and the epoch).
    """

    def __init__(self, loader: Any, collate: TestCollate, on_device: bool = False) -> None:
        self.loader = loader
        self.collate = collate
        self.on_device = on_device

    def __iter__(self) -> Iterator[Batch]:
        finish = self.collate.for_device if self.on_device else self.collate.finish
        for batch in self.loader:
            yield finish(batch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def batch_sampler(self) -> Any:
        return self.loader.batch_sampler

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers

    def set_epoch(self, epoch: int) -> None:
        """Makes the next iteration draw the batches of ``epoch`` (when the batch sampler's
        draws depend on the epoch)."""
        set_epoch = getattr(self.loader.batch_sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
