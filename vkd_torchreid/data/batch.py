"""What travels from a dataset to the collate function (:class:`Item`) and from the loader to
the engine (:class:`Batch`): typed records instead of dicts of strings.

torchreid's ``Engine.train`` loop hands each batch, untouched, to
``engine.forward_backward(batch)``; it needs nothing of the batch itself (only ``len`` and
iteration of ``engine.train_loader``), so a :class:`Batch` passes through it as it is.

A batch is finished on the CPU (``img`` float) or on the device: then ``img`` stays uint8
(or JPEG bytes, ``data.decode_device cuda``) and :attr:`Batch.work` says what is left
(normalisation, the erasing boxes drawn on the CPU, decoding and geometry);
:meth:`Batch.device_images` does it where the network runs.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from vkd_torchreid.data.transforms import erase_boxes_, normalize_on_device
from vkd_torchreid.utils.device import send, to_device


@dataclasses.dataclass
class Item:
    """One decoded item of a dataset.

    Attributes:
        img: uint8 ``[V, H, W, 3]`` frames (geometry done, not normalised).
        pid, camid: identity and camera.
        skipped: frames replaced because they were unreadable (``data.skip_corrupt``).
        decoded: frames decoded for the item (None: ``V``).
        index: the item's index in a test dataset (None for training items).
        student: the student's M positions among the item's N frames (empty: none drawn).
        teacher_rows: ``[N]`` teacher-cache row of each of the N frames (cached targets only).
    """

    img: np.ndarray
    pid: int
    camid: int
    skipped: Sequence[str] = ()
    decoded: Optional[int] = None
    index: Optional[int] = None
    student: Sequence[int] = ()
    teacher_rows: Optional[np.ndarray] = None
    #: With ``data.decode_device cuda``: the V frames' JPEG files as uint8 byte tensors
    #: (``img`` is then an empty ``[V, 0, 0, 3]`` placeholder) and their ``[V, 3]`` drawn
    #: geometry ``(dy, dx, flipped)`` (see ``TrainFrameTransform.draw_geometry``).
    jpeg: Sequence[torch.Tensor] = ()
    geometry: Optional[np.ndarray] = None
    #: The files of :attr:`jpeg` (an error while decoding the batch names the bad one).
    jpeg_paths: Sequence[str] = ()


@dataclasses.dataclass
class DeviceWork:
    """What is left to do to a batch on the device (see :meth:`Batch.device_images`).

    Attributes:
        mean, std: ``data.norm_mean`` / ``data.norm_std``.
        erase: int64 ``[K, 5]`` erasing boxes ``(frame, top, left, h, w)`` over the batch's
            ``B * V`` frames, drawn on the CPU (``draw_erase_boxes``), or None.
        jpeg: the ``B * V`` frames' JPEG bytes to decode first, or None.
        jpeg_paths: their files (named when one does not decode).
        geometry: int64 ``[B * V, 3]`` ``(dy, dx, flipped)`` of the decoded frames.
        size: ``(height, width)`` the decoded frames are resized to.
        pad: ``data.pad`` of the crop.
    """

    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    erase: Optional[torch.Tensor] = None
    jpeg: Optional[List[torch.Tensor]] = None
    jpeg_paths: Sequence[str] = ()
    geometry: Optional[torch.Tensor] = None
    size: Tuple[int, int] = (0, 0)
    pad: int = 0


@dataclasses.dataclass
class Batch:
    """A batch of items.

    Attributes:
        img: uint8 ``[B, V, H, W, 3]`` while unfinished, then normalised (and, in training,
            erased) float32 ``[B, V, 3, H, W]``.
        pid, camid: int64 ``[B]``.
        skipped: paths of the frames replaced because they were unreadable.
        decoded: frames the loader decoded for the batch.
        index: int64 ``[B]`` test-item indices, or None.
        student: int64 ``[B, M]`` the student's frame positions among the N, or None.
        teacher_rows: int64 ``[B, N]`` teacher-cache rows, or None.
    """

    img: torch.Tensor
    pid: torch.Tensor
    camid: torch.Tensor
    skipped: List[str] = dataclasses.field(default_factory=list)
    decoded: int = 0
    index: Optional[torch.Tensor] = None
    student: Optional[torch.Tensor] = None
    teacher_rows: Optional[torch.Tensor] = None
    #: What is left to do on the device; None: nothing (a finished batch) or not decided yet.
    work: Optional[DeviceWork] = None
    #: JPEG bytes of the ``B * V`` frames packed in one uint8 tensor (:func:`pack_bytes`: a
    #: loader worker sends two tensors, not one per frame), their sizes and their geometry,
    #: until :attr:`work` takes them.
    jpeg: Optional[torch.Tensor] = None
    jpeg_sizes: Optional[torch.Tensor] = None
    jpeg_paths: List[str] = dataclasses.field(default_factory=list)
    geometry: Optional[torch.Tensor] = None

    @property
    def finished(self) -> bool:
        """Whether ``img`` is normalised (float) rather than raw uint8 frames."""
        return self.img.dtype != torch.uint8

    def device_images(self, device: torch.device, channels_last: bool = False,
                      dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The batch's frames ``[B, V, 3, H, W]`` on ``device``, in NCHW or channels-last order.

        A finished batch is moved (its dtype kept). Otherwise :attr:`work` is done there:
        decoding (JPEG bytes), geometry, normalisation and erasing, in ``dtype`` (default
        float32); on the CPU in float32 the result equals the CPU finishing bit for bit.
        """
        if self.finished:
            return to_device(self.img, device, channels_last)
        work = self.work
        if work is None:
            raise ValueError("an unfinished batch (uint8 frames) without its device work: "
                             "finish it with the loader's collate")
        if work.jpeg is not None:
            from vkd_torchreid.data.gpu_decode import decode_frames

            frames = decode_frames(work.jpeg, work.geometry, work.size, work.pad, device,
                                   paths=work.jpeg_paths)
            frames = frames.view(*self.img.shape[:2], *frames.shape[1:])
        else:
            frames = self.img
        x = normalize_on_device(frames, work.mean, work.std, device, channels_last,
                                dtype or torch.float32)
        if work.erase is not None:
            erase_boxes_(x, send(work.erase, device))
        return x

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned memory (``DataLoader(pin_memory=True)`` calls
        this in its pinning thread)."""
        pinned = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in pinned.items():
            if isinstance(value, torch.Tensor) and value.numel():
                pinned[name] = value.pin_memory()
        return Batch(**pinned)


def _ints(values: List[object]) -> Optional[torch.Tensor]:
    """int64 tensor of per-item values, None when the items have none."""
    if not values or values[0] is None or not len(np.atleast_1d(values[0])):
        return None
    return torch.tensor(np.array(values), dtype=torch.int64)


def pack_bytes(chunks: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(one uint8 tensor, int64 sizes) of 1-D uint8 ``chunks``. A tensor that leaves a loader
    worker costs a shared-memory segment of its own: 256 frames' bytes one by one take tens
    of milliseconds to cross, packed they take two."""
    sizes = torch.tensor([int(c.numel()) for c in chunks], dtype=torch.int64)
    return torch.cat(list(chunks)), sizes


def unpack_bytes(data: torch.Tensor, sizes: torch.Tensor) -> List[torch.Tensor]:
    """The chunks of :func:`pack_bytes`, as views of ``data`` (pinned if it is)."""
    return list(torch.split(data, sizes.tolist()))


def stack_items(items: Sequence[Item]) -> Batch:
    """The unfinished batch of ``items`` (``img`` uint8 ``[B, V, H, W, 3]``; with JPEG bytes,
    a ``[B, V, 0, 0, 3]`` placeholder and the bytes in ``jpeg``)."""
    chunks = [t for it in items for t in it.jpeg]
    jpeg, jpeg_sizes = pack_bytes(chunks) if chunks else (None, None)
    geometry = (torch.from_numpy(np.concatenate([it.geometry for it in items]))
                if jpeg is not None else None)
    return Batch(
        img=torch.from_numpy(np.stack([it.img for it in items])),
        pid=torch.tensor([it.pid for it in items], dtype=torch.int64),
        camid=torch.tensor([it.camid for it in items], dtype=torch.int64),
        skipped=[p for it in items for p in it.skipped],
        decoded=sum(int(it.img.shape[0] if it.decoded is None else it.decoded) for it in items),
        index=_ints([it.index for it in items]),
        student=_ints([it.student for it in items]),
        teacher_rows=_ints([it.teacher_rows for it in items]), jpeg=jpeg,
        jpeg_sizes=jpeg_sizes, jpeg_paths=[p for it in items for p in it.jpeg_paths],
        geometry=geometry)
