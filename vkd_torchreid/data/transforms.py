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
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from vkd_torchreid.utils.device import send

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

    def draw_geometry(self, flip: Optional[bool] = None) -> Tuple[int, int, bool]:
        """The random part of :meth:`__call__` without a frame: ``(dy, dx, flipped)``, the crop
        window's offset in the padded frame (``0..2 pad``) and the flip state, drawn in the
        same order from the same RNG (for frames decoded elsewhere, see
        :func:`pad_crop_flip`)."""
        pad = self.options.pad
        dy = dx = pad
        if pad > 0:
            dy, dx = (int(v) for v in np.random.randint(0, 2 * pad + 1, size=2))
        return dy, dx, bool(self.draw_flip() if flip is None else flip)

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


def draw_erase_boxes(frames: int, height: int, width: int, prob: float,
                     scale: Tuple[float, float], ratio: Tuple[float, float],
                     ratio_dist: str = "uniform") -> np.ndarray:
    """torchvision's RandomErasing draws for ``frames`` frames of ``height x width``, from the
    global numpy RNG (the sequence :func:`random_erase_` has always drawn).

    ``ratio_dist='uniform'`` draws the box's aspect ratio uniformly in ``ratio`` as
    torchvision 0.4 did (the reference's version); ``'log'`` draws it log-uniformly as
    torchvision >= 0.5 does.

    Returns:
        int64 ``[K, 5]``: ``(frame, top, left, box height, box width)``, at most one box a
        frame, in frame order (a frame whose 10 attempts all failed has none).
    """
    if ratio_dist not in ERASE_RATIO_DISTS:
        raise ValueError(f"random erasing ratio_dist={ratio_dist!r}: expected one of "
                         f"{ERASE_RATIO_DISTS}")
    boxes: List[Tuple[int, int, int, int, int]] = []
    if prob <= 0:
        return np.zeros((0, 5), dtype=np.int64)
    area = height * width
    if ratio_dist == "log":
        low, high, draw = math.log(ratio[0]), math.log(ratio[1]), math.exp
    else:
        low, high, draw = ratio[0], ratio[1], float
    chosen = np.nonzero(np.random.random_sample(frames) < prob)[0]
    for i in chosen:
        for _ in range(ERASE_ATTEMPTS):
            target = area * np.random.uniform(scale[0], scale[1])
            aspect = draw(np.random.uniform(low, high))
            eh = int(round(math.sqrt(target * aspect)))
            ew = int(round(math.sqrt(target / aspect)))
            if eh < height and ew < width:
                top = np.random.randint(0, height - eh + 1)
                left = np.random.randint(0, width - ew + 1)
                boxes.append((int(i), int(top), int(left), eh, ew))
                break
    return np.array(boxes, dtype=np.int64).reshape(-1, 5)


def random_erase_(x: torch.Tensor, prob: float, scale: Tuple[float, float],
                  ratio: Tuple[float, float], value: float = 0.0,
                  ratio_dist: str = "uniform") -> torch.Tensor:
    """torchvision's RandomErasing applied independently to every frame of ``[..., C, H, W]``
    (boxes from :func:`draw_erase_boxes`). Modifies ``x`` in place and returns it."""
    h, w = x.shape[-2:]
    flat = x.reshape(-1, *x.shape[-3:])
    for i, top, left, eh, ew in draw_erase_boxes(flat.shape[0], h, w, prob, scale, ratio,
                                                 ratio_dist).tolist():
        flat[i, :, top:top + eh, left:left + ew] = value
    return x


def erase_boxes_(x: torch.Tensor, boxes: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Erases ``boxes`` (int64 ``[K, 5]`` from :func:`draw_erase_boxes`, on ``x``'s device) in
    ``x [..., C, H, W]`` in place, with a few whole-tensor operations (no loop over boxes):
    what :func:`random_erase_` does with the same draws, on any device."""
    if boxes.shape[0] == 0:
        return x
    h, w = x.shape[-2:]
    flat = x.reshape(-1, *x.shape[-3:])
    frame, top, left, eh, ew = boxes.unbind(1)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))
    flat[frame] = flat[frame].masked_fill(inside[:, None], value)  # one box a frame
    return x


def normalize_on_device(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                        device: torch.device, channels_last: bool = False,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``uint8 [..., H, W, 3]`` -> normalised ``[..., 3, H, W]`` on ``device``: the frames cross
    as uint8 (non-blocking from pinned memory) and are converted there.

    The arithmetic is :func:`normalize_batch`'s (float32 ``x * (1 / (255 std)) - mean / std``,
    two rounded operations), so on the CPU the result is bitwise the same; then cast to
    ``dtype`` (what autocast would give the first layer) in NCHW or channels-last order.
    """
    scale = torch.tensor([1.0 / (_UINT8_MAX * s) for s in std], dtype=torch.float32)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32)
    x = frames.to(device, non_blocking=True).to(torch.float32)
    x = x.mul_(send(scale, device)).sub_(send(shift, device)).movedim(-1, -3)
    shape = x.shape
    flat = x.reshape(-1, *shape[-3:])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return flat.to(dtype=dtype, memory_format=fmt).view(shape)


def pad_crop_flip(frames: torch.Tensor, geometry: torch.Tensor, pad: int) -> torch.Tensor:
    """:func:`pad_random_crop` then the flip of :class:`TrainFrameTransform`, for a stack of
    frames on any device, with draws made elsewhere (:meth:`TrainFrameTransform.draw_geometry`).

    Args:
        frames: uint8 ``[F, H, W, 3]``.
        geometry: int64 ``[F, 3]`` ``(dy, dx, flipped)`` per frame, on ``frames``' device.
        pad: ``data.pad``.

    Returns:
        uint8 ``[F, H, W, 3]``: one gather from the zero-padded frames.
    """
    f, h, w = frames.shape[:3]
    padded = torch.nn.functional.pad(frames, (0, 0, pad, pad, pad, pad)) if pad > 0 else frames
    dy, dx, flipped = geometry.unbind(1)
    ys = dy[:, None] + torch.arange(h, device=frames.device)  # [F, H]
    xs = torch.arange(w, device=frames.device).expand(f, w)
    xs = torch.where(flipped[:, None].bool(), w - 1 - xs, xs) + dx[:, None]  # [F, W]
    index = torch.arange(f, device=frames.device)[:, None, None]
    return padded[index, ys[:, :, None], xs[:, None, :]]
