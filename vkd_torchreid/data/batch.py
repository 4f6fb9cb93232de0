"""What travels from a dataset to the collate function (:class:`Item`) and from the loader to
the engine (:class:`Batch`): typed records instead of dicts of strings.

torchreid's ``Engine.train`` loop hands each batch, untouched, to
``engine.forward_backward(batch)``; it needs nothing of the batch itself (only ``len`` and
iteration of ``engine.train_loader``), so a :class:`Batch` passes through it as it is.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np
import torch


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

    @property
    def finished(self) -> bool:
        """Whether ``img`` is normalised (float) rather than raw uint8 frames."""
        return self.img.dtype != torch.uint8

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned memory (``DataLoader(pin_memory=True)`` calls
        this in its pinning thread)."""
        pinned = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in pinned.items():
            if isinstance(value, torch.Tensor):
                pinned[name] = value.pin_memory()
        return Batch(**pinned)


def _ints(values: List[object]) -> Optional[torch.Tensor]:
    """int64 tensor of per-item values, None when the items have none."""
    if not values or values[0] is None or not len(np.atleast_1d(values[0])):
        return None
    return torch.tensor(np.array(values), dtype=torch.int64)


def stack_items(items: Sequence[Item]) -> Batch:
    """The unfinished batch of ``items`` (``img`` uint8 ``[B, V, H, W, 3]``)."""
    return Batch(
        img=torch.from_numpy(np.stack([it.img for it in items])),
        pid=torch.tensor([it.pid for it in items], dtype=torch.int64),
        camid=torch.tensor([it.camid for it in items], dtype=torch.int64),
        skipped=[p for it in items for p in it.skipped],
        decoded=sum(int(it.img.shape[0] if it.decoded is None else it.decoded) for it in items),
        index=_ints([it.index for it in items]),
        student=_ints([it.student for it in items]),
        teacher_rows=_ints([it.teacher_rows for it in items]))
