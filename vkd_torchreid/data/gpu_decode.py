"""Decoding and resizing training frames where the network runs (``data.decode_device cuda``).

The loader workers only read each frame's JPEG bytes and draw its geometry (crop offset and
flip, from the same RNG in the same order as the CPU path); the consuming process decodes the
batch with nvJPEG (``torchvision.io.decode_jpeg`` on a list, ``device='cuda'``), resizes the
frames whose size differs with antialiased bicubic interpolation (Pillow's kernel, a = -0.5,
in float32, rounded back to uint8), and crops and flips them: one gather. Normalisation and
erasing follow as for any batch finished on the device.

Pillow resizes in fixed point, nvJPEG and libjpeg-turbo round their IDCT differently: the
frames are close to the CPU path's, not equal. :func:`decode_difference` measures how close.
The same functions run on the CPU (torchvision's libjpeg), which the tests use.
"""
from __future__ import annotations

import re
import warnings
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from vkd_torchreid.data.io import CorruptImageError, read_image, read_jpeg_bytes
from vkd_torchreid.data.transforms import pad_crop_flip, resize
from vkd_torchreid.utils.device import send

#: Values of ``data.decode_device``.
DECODE_DEVICES = ("cpu", "cuda")


_DECODE_STREAMS: Dict[int, torch.cuda.Stream] = {}


def _decode_stream(device: torch.device, consumer: torch.cuda.Stream) -> torch.cuda.Stream:
    """The side stream (one per GPU, never the caller's) that is current while nvJPEG's
    outputs are allocated. ``torch.cuda.Stream`` hands out PyTorch's pooled streams in turn,
    so a caller running on a pooled stream could be given its own."""
    stream = _DECODE_STREAMS.get(device.index)
    while stream is None or stream == consumer:
        stream = _DECODE_STREAMS[device.index] = torch.cuda.Stream(device=device.index)
    return stream


def torchvision_decode(jpeg: Sequence[torch.Tensor], device: torch.device) -> List[torch.Tensor]:
    """torchvision's ``decode_jpeg`` of the list on ``device``, as it is (on CUDA without the
    guard of :func:`decode_jpegs`): RGB uint8 ``[3, h, w]`` frames."""
    with warnings.catch_warnings():  # torchvision >= 0.29 points at torchcodec on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    out = decode_jpeg(list(jpeg), mode=ImageReadMode.RGB, device=device)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def decode_jpegs(jpeg: Sequence[torch.Tensor], device: torch.device) -> List[torch.Tensor]:
    """RGB uint8 ``[3, h, w]`` frames (each its own size) of JPEG byte tensors, decoded on
    ``device`` (nvJPEG on CUDA, libjpeg on the CPU) in one call.

    On CUDA the call runs with a side stream current, and the frames are marked as used by
    the caller's stream. torchvision allocates nvJPEG's outputs from the caching allocator's
    pool of the current stream and decodes on a private stream that does not wait for it
    (and nvJPEG's hardware engine does not order its writes behind queued work anyway), so
    with the caller's stream current it is handed blocks that queued kernels (the previous
    step's backward) have freed but not yet run on, and overwrites them: silently wrong
    activations and gradients, non-finite losses a few steps in. The side stream's pool only
    holds blocks of earlier decodes, which :meth:`torch.Tensor.record_stream` keeps out of
    reuse until the caller's kernels on them have run. No host synchronisation is added.
    """
    if device.type != "cuda":
        return torchvision_decode(jpeg, device)
    if device.index is None:  # torchvision rebuilds its decoder when 'cuda' != 'cuda:0'
        device = torch.device("cuda", torch.cuda.current_device())
    consumer = torch.cuda.current_stream(device)
    side = _decode_stream(device, consumer)
    with torch.cuda.stream(side):
        frames = torchvision_decode(jpeg, device)
    consumer.wait_stream(side)
    for frame in frames:
        frame.record_stream(consumer)
    return frames


def _reason(exc: BaseException) -> str:
    """torchvision's decoding error without its source location (first line)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^.*?\.cpp:\d+,\s*", "", text)


def _bad_frame(jpeg: Sequence[torch.Tensor], device: torch.device, paths: Sequence[str],
               exc: RuntimeError) -> Exception:
    """The error of a batch that did not decode, naming its first bad frame: each frame is
    decoded alone, on the CPU (libjpeg) and then on ``device``."""
    for where in dict.fromkeys((torch.device("cpu"), device)):
        for i, data in enumerate(jpeg):
            try:
                decode_jpegs([data], where)
            except RuntimeError as one:
                name = paths[i] if i < len(paths) else f"<frame {i} of the batch>"
                if where.type == "cpu":
                    return CorruptImageError(name, f"not a decodable JPEG ({_reason(one)})")
                return CorruptImageError(name, f"nvJPEG cannot decode it ({_reason(one)}); "
                                               "data.decode_device cpu decodes with OpenCV")
    return RuntimeError(f"decoding a batch of {len(jpeg)} JPEG frames on {device} failed, "
                        f"although each frame decodes alone: {_reason(exc)}")


def decode_checked(jpeg: Sequence[torch.Tensor], device: torch.device,
                   paths: Sequence[str] = ()) -> List[torch.Tensor]:
    """:func:`decode_jpegs`; when the batch does not decode, a :class:`CorruptImageError`
    naming the first frame (of ``paths``, the frames' files) that does not decode alone."""
    try:
        return decode_jpegs(jpeg, device)
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        raise _bad_frame(jpeg, device, paths, exc) from exc


def resize_frames(frames: Sequence[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """uint8 ``[F, height, width, 3]`` from uint8 ``[3, h, w]`` frames: frames of one source
    size are resized together (antialiased bicubic, float32, rounded); frames already at the
    size are kept as they are."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault((int(f.shape[1]), int(f.shape[2])), []).append(i)
    resized = {}
    for (h, w), idx in groups.items():
        x = torch.stack([frames[i] for i in idx])
        if (h, w) != (height, width):
            x = F.interpolate(x.float(), size=(height, width), mode="bicubic",
                              align_corners=False, antialias=True)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        resized[(h, w)] = x
    if len(groups) == 1:  # one source size (the usual case): no scatter
        return next(iter(resized.values())).permute(0, 2, 3, 1)
    device = frames[0].device
    out = torch.empty(len(frames), 3, height, width, dtype=torch.uint8, device=device)
    for key, idx in groups.items():
        out[send(torch.tensor(idx), device)] = resized[key]
    return out.permute(0, 2, 3, 1)


def decode_frames(jpeg: Sequence[torch.Tensor], geometry: torch.Tensor, size: Tuple[int, int],
                  pad: int, device: torch.device, paths: Sequence[str] = ()) -> torch.Tensor:
    """The training frames uint8 ``[F, H, W, 3]`` on ``device``: decoded, resized to ``size``,
    padded by ``pad`` and cropped at the drawn offsets, flipped where drawn (``geometry``
    int64 ``[F, 3]``: ``(dy, dx, flipped)``). A frame that does not decode is named (of
    ``paths``, the frames' files) by a :class:`CorruptImageError`."""
    frames = resize_frames(decode_checked(jpeg, device, paths), *size)
    return pad_crop_flip(frames, send(geometry, device), pad)


def decode_difference(paths: Sequence[str], height: int, width: int,
                      device: torch.device) -> Dict[str, float]:
    """How far decoding and resizing on ``device`` is from the CPU path (OpenCV decode,
    Pillow bicubic resize), in uint8 levels over every pixel of ``paths``.

    Returns:
        ``decode_mean``/``decode_max``: the decoded frames alone (before resizing);
        ``mean``/``max``: the frames at ``height x width``; ``frames``: how many.
    """
    jpeg = [read_jpeg_bytes(p) for p in paths]
    decoded = decode_jpegs(jpeg, device)
    ours = resize_frames(decoded, height, width).cpu().numpy().astype(np.int16)
    dec_sum, dec_max, dec_n, total, worst = 0.0, 0, 0, 0.0, 0
    for i, path in enumerate(paths):
        cpu = read_image(path)
        d = np.abs(decoded[i].permute(1, 2, 0).cpu().numpy().astype(np.int16) - cpu)
        dec_sum, dec_max, dec_n = dec_sum + float(d.sum()), max(dec_max, int(d.max())), dec_n + d.size
        r = np.abs(ours[i] - resize(cpu, height, width).astype(np.int16))
        total, worst = total + float(r.mean()), max(worst, int(r.max()))
    n = max(len(paths), 1)
    return {"frames": len(paths), "decode_mean": dec_sum / max(dec_n, 1),
            "decode_max": float(dec_max), "mean": total / n, "max": float(worst)}
