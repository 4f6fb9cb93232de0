"""Where tensors go and in which precision: autocast modes and memory formats."""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Autocast dtypes of ``train.amp`` / ``test.amp`` ('' is float32).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Values of ``train.amp`` and ``test.amp``.
AMP_MODES = ("", *AUTOCAST_DTYPES)


def resolve_device(name: str, use_gpu: bool) -> torch.device:
    """``'auto'``: CUDA when ``use_gpu`` and CUDA is available, else the CPU; any other name
    (``'cpu'``, ``'cuda'``, ``'cuda:1'``) as given."""
    if name == "auto":
        name = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in :data:`AMP_MODES` ('' is a no-op)."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[amp])


def to_device(img: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Moves ``[..., C, H, W]`` to ``device`` in NCHW or channels-last memory order."""
    img = img.to(device, non_blocking=True)
    shape = img.shape
    flat = img.reshape(-1, *shape[-3:])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return flat.contiguous(memory_format=fmt).view(shape)


def send(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (indices, boxes, constants) on ``device`` without a host-device
    synchronisation: on CUDA it is pinned (when it is not) and copied non-blocking. A blocking
    copy, or one from pageable memory, may wait for every kernel queued so far, which leaves
    the device idle while the host queues the next ones."""
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        t = t.contiguous().pin_memory()  # a strided pinned view would copy through pageable
    return t.to(device, non_blocking=True)


def configure_cuda(cudnn_benchmark: bool, tf32: Optional[bool]) -> Dict[str, bool]:
    """Sets the process-wide CUDA backend flags of ``train.cudnn_benchmark`` and ``train.tf32``.

    Args:
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` (cuDNN times its algorithms for each
            new input shape and keeps the fastest; our shapes are fixed, as torchreid's
            ``main.py`` assumes when it sets it).
        tf32: None leaves PyTorch's own setting (matmuls in plain float32, cuDNN convolutions
            in TF32 on Ampere and newer); True or False sets both
            ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``.

    Returns:
        The three flags as they are now.
    """
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
    flags = {"cudnn_benchmark": torch.backends.cudnn.benchmark,
             "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
             "cudnn_tf32": torch.backends.cudnn.allow_tf32}
    logger.info("CUDA backend: %s", ", ".join(f"{k} {v}" for k, v in flags.items()))
    return flags


def place(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Moves ``model`` to ``device`` in NCHW or channels-last memory order (the one helper
    that places a network for training, evaluation and inference)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
