"""The reference augmentations, done fast: geometry on uint8 frames, normalisation and random
erasing once per batch.

Per frame (in the loader workers): bicubic resize with Pillow (antialiased when shrinking, as
the reference's ``T.Resize(size, interpolation=3)`` on PIL images), then numpy pad + random crop,
horizontal flip, all on ``uint8 [H, W, 3]`` arrays. Per batch (in the consuming process: with
loader workers the batch travels as uint8 and :class:`FinishingLoader` finishes it; without
workers the collate function does): one float conversion and ImageNet normalisation of
``[B, V, H, W, 3]``, then random erasing of each frame (value 0 after normalisation, as
torchvision's RandomErasing placed after Normalize in the reference).

Randomness comes from the global ``numpy.random`` state: torch seeds it in every worker, and
checkpoints save it, so a resumed run draws the same augmentations.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from vkd_torchreid.data.batch import Batch, Item, stack_items

ERASE_ATTEMPTS = 10  # torchvision's RandomErasing tries this many boxes before giving up
#: Values of ``data.random_erase_ratio_dist``: the erased box's aspect ratio is drawn uniformly
#: in the range (torchvision 0.4, the reference's) or log-uniformly (torchvision >= 0.5).
ERASE_RATIO_DISTS = ("uniform", "log")
_UINT8_MAX = 255.0
_NORM_FRAMES = 2  # frames normalised per step (cache-sized)


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    """Input size and the reference augmentations (values from the config:
    :meth:`from_config`)."""

    height: int
    width: int
    norm_mean: Tuple[float, float, float]
    norm_std: Tuple[float, float, float]
    pad: int
    flip_prob: float
    erase_prob: float
    erase_scale: Tuple[float, float]
    #: None: the dataset's own default (people 0.3-3.3, vehicles and animals 0.7-1.4).
    erase_ratio: Optional[Tuple[float, float]]
    #: Aspect-ratio draw of an erased box: 'uniform' in the range (torchvision 0.4, which
    #: the reference used) or 'log' (log-uniform, torchvision >= 0.5).
    erase_ratio_dist: str

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentOptions:
        d = cfg.data
        return cls(height=d.height, width=d.width, norm_mean=tuple(d.norm_mean),
                   norm_std=tuple(d.norm_std), pad=d.pad, flip_prob=d.flip_prob,
                   erase_prob=d.random_erase_prob, erase_scale=tuple(d.random_erase_scale),
                   erase_ratio=tuple(d.random_erase_ratio) or None,
                   erase_ratio_dist=d.random_erase_ratio_dist)


_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC  # Image.BICUBIC before Pillow 9.1


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of ``[H, W, 3]`` uint8 to ``[height, width, 3]``.

    Pillow's bicubic, as the reference's ``T.Resize(size, interpolation=3)`` on PIL images:
    it antialiases when shrinking (OpenCV's ``INTER_CUBIC`` does not). The result is a new
    writable, C-contiguous array; a frame already at the size is returned as it is (no copy).
    """
    if img.shape[0] == height and img.shape[1] == width:
        return img
    out = Image.fromarray(img).resize((width, height), _BICUBIC)
    return np.array(out)  # np.asarray would be read-only (a view of Pillow's bytes)


def pad_random_crop(img: np.ndarray, pad: int, rng: Any = np.random) -> np.ndarray:
    """Zero-pads by ``pad`` pixels on every side and crops back to the input size at random.

    Same result as ``T.Pad(pad)`` then ``T.RandomCrop(size)`` without building the padded
    image.
    """
    if pad <= 0:
        return img
    h, w = img.shape[:2]
    dy, dx = (int(v) for v in rng.randint(0, 2 * pad + 1, size=2))
    oy, ox = dy - pad, dx - pad  # source offset of the crop window
    out = np.zeros_like(img)
    ys, ye = max(0, oy), min(h, h + oy)
    xs, xe = max(0, ox), min(w, w + ox)
    out[ys - oy:ye - oy, xs - ox:xe - ox] = img[ys:ye, xs:xe]
    return out


class TrainFrameTransform:
    """Geometry of the training augmentation on one uint8 frame: resize, pad+crop, flip."""

    def __init__(self, options: AugmentOptions) -> None:
        self.options = options

    def draw_flip(self) -> bool:
        """One horizontal-flip draw (``data.flip_prob``)."""
        return self.options.flip_prob > 0 and np.random.random_sample() < self.options.flip_prob

    def __call__(self, img: np.ndarray, flip: Optional[bool] = None) -> np.ndarray:
        """The augmented frame; ``flip`` given: that flip state instead of a draw."""
        o = self.options
        img = resize(img, o.height, o.width)
        img = pad_random_crop(img, o.pad)
        if self.draw_flip() if flip is None else flip:
            img = img[:, ::-1]
        return img


class TestFrameTransform:
    """Test-time geometry: bicubic resize only."""

    def __init__(self, options: AugmentOptions) -> None:
        self.options = options

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return resize(img, self.options.height, self.options.width)


def normalize_batch(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8 [..., H, W, 3]`` -> normalised ``float32 [..., 3, H, W]``.

    The result is a channels-last view of contiguous memory, which is what a
    ``channels_last`` model wants; ``.contiguous()`` gives NCHW if needed.
    """
    h, w, c = frames.shape[-3:]
    scale = torch.tensor([1.0 / (_UINT8_MAX * s) for s in std], dtype=torch.float32)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32)
    # One frame per row, with the per-channel constants laid out along the row: plain
    # element-wise ops (no broadcast over a size-3 dimension), a few frames at a time so
    # that the float temporaries stay in cache.
    pixels = h * w
    scale_row, shift_row = scale.repeat(pixels), shift.repeat(pixels)
    src = frames.reshape(-1, pixels * c)
    out = torch.empty(frames.shape, dtype=torch.float32)
    dst = out.view(-1, pixels * c)
    for lo in range(0, src.shape[0], _NORM_FRAMES):
        chunk = dst[lo:lo + _NORM_FRAMES]
        chunk.copy_(src[lo:lo + _NORM_FRAMES])
        chunk.mul_(scale_row).sub_(shift_row)
    return out.movedim(-1, -3)


def random_erase_(x: torch.Tensor, prob: float, scale: Tuple[float, float],
                  ratio: Tuple[float, float], value: float = 0.0,
                  ratio_dist: str = "uniform") -> torch.Tensor:
    """torchvision's RandomErasing applied independently to every frame of ``[..., C, H, W]``.

    ``ratio_dist='uniform'`` draws the box's aspect ratio uniformly in ``ratio`` as
    torchvision 0.4 did (the reference's version); ``'log'`` draws it log-uniformly as
    torchvision >= 0.5 does. Modifies ``x`` in place and returns it.
    """
    if ratio_dist not in ERASE_RATIO_DISTS:
        raise ValueError(f"random erasing ratio_dist={ratio_dist!r}: expected one of "
                         f"{ERASE_RATIO_DISTS}")
    if prob <= 0:
        return x
    h, w = x.shape[-2:]
    area = h * w
    flat = x.reshape(-1, *x.shape[-3:])
    if ratio_dist == "log":
        low, high, draw = math.log(ratio[0]), math.log(ratio[1]), math.exp
    else:
        low, high, draw = ratio[0], ratio[1], float
    chosen = np.nonzero(np.random.random_sample(flat.shape[0]) < prob)[0]
    for i in chosen:
        for _ in range(ERASE_ATTEMPTS):
            target = area * np.random.uniform(scale[0], scale[1])
            aspect = draw(np.random.uniform(low, high))
            eh = int(round(math.sqrt(target * aspect)))
            ew = int(round(math.sqrt(target / aspect)))
            if eh < h and ew < w:
                top = np.random.randint(0, h - eh + 1)
                left = np.random.randint(0, w - ew + 1)
                flat[i, :, top:top + eh, left:left + ew] = value
                break
    return x


class TestCollate:
    """Stacks test items into a :class:`~vkd_torchreid.data.batch.Batch` and normalises it.

    With ``defer``, ``img`` stays uint8 ``[B, V, H, W, 3]`` (4x less data between loader
    workers and the consuming process) until :meth:`finish`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, options: AugmentOptions, defer: bool = False) -> None:
        self.options = options
        self.defer = defer

    def finish(self, batch: Batch) -> Batch:
        """Normalises a batch whose ``img`` is still uint8 (a finished batch is returned as
        it is)."""
        if not batch.finished:
            o = self.options
            batch.img = normalize_batch(batch.img, o.norm_mean, o.norm_std)
        return batch

    def __call__(self, items: List[Item]) -> Batch:
        batch = stack_items(items)
        return batch if self.defer else self.finish(batch)


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


class FinishingLoader:
    """A DataLoader whose batches are finished (normalised, and erased in training) in the
    consuming process: its workers (if any) deliver uint8 batches.

    It exposes what the engines use: ``len``, iteration, ``dataset``, ``batch_sampler``,
    ``num_workers`` and :meth:`set_epoch`, which passes the epoch to the batch sampler (whose draws depend on the
    seed and the epoch).
    """

    def __init__(self, loader: Any, collate: TestCollate) -> None:
        self.loader = loader
        self.collate = collate

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield self.collate.finish(batch)

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
