"""Image decoding with OpenCV that fails at once, naming the file.

torchreid's ``read_image`` retries forever on an unreadable file; training on a dataset
with one bad frame would hang. Ours raises :class:`CorruptImageError` immediately.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch

# Decoding threads inside OpenCV fight with DataLoader workers on small machines.
cv2.setNumThreads(0)

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded (corrupt, truncated or empty)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot decode image {path}: {reason}")
        self.path = path
        self.reason = reason


#: OpenCV >= 4.10 decodes straight to RGB (no BGR->RGB pass); older ones convert after.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _file_bytes(path: str) -> np.ndarray:
    """A non-empty file's bytes, uint8 ``[n]`` (errors name the file)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except OSError as exc:
        raise CorruptImageError(path, f"unreadable file ({exc})") from exc
    if raw.size == 0:
        raise CorruptImageError(path, "empty file")
    return raw


def read_image(path: str) -> np.ndarray:
    """Reads an image as an RGB ``uint8`` array shaped ``[H, W, 3]``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptImageError: the file is empty, truncated or not an image.
    """
    raw = _file_bytes(path)
    head = raw[:2].tobytes()
    # OpenCV decodes a truncated JPEG silently (grey bottom rows): check the end marker.
    if head == _JPEG_SOI and _JPEG_EOI not in raw[-64:].tobytes():
        raise CorruptImageError(path, "truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(raw, _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise CorruptImageError(path, "not a decodable image")
    return img if _IMREAD_RGB is not None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_jpeg_bytes(path: str) -> torch.Tensor:
    """A JPEG file's bytes as a uint8 tensor ``[n]``, for decoding elsewhere (on the GPU):
    checked to start and end as a JPEG does, not decoded.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptImageError: empty, not a JPEG, or truncated (no end-of-image marker).
    """
    raw = _file_bytes(path)
    if raw[:2].tobytes() != _JPEG_SOI:
        raise CorruptImageError(path, "not a JPEG file (data.decode_device cuda reads JPEGs "
                                      "only)")
    if _JPEG_EOI not in raw[-64:].tobytes():
        raise CorruptImageError(path, "truncated JPEG (no end-of-image marker)")
    return torch.from_numpy(raw)


def write_jpeg(path: str, rgb: np.ndarray, quality: int = 90) -> None:
    """Writes an RGB ``uint8`` array ``[H, W, 3]`` as a JPEG file, creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"cannot encode JPEG for {path}")
    buf.tofile(path)


def load_mat(path: str, key: str) -> np.ndarray:
    """The array stored under ``key`` in the MATLAB file ``path``.

    Raises:
        ValueError: the file cannot be read, or has no ``key``.
    """
    import scipy.io

    try:
        content = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises ValueError, OSError, TypeError, MatReadError...
        raise ValueError(f"cannot read MATLAB file {path}: {exc}") from exc
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"MATLAB file {path} has no key {key!r} (found {found})")
    return np.asarray(content[key])
