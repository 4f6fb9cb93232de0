"""The identity of a network's weights: one SHA-256 of its whole state, shared by everything
that must tell two networks apart (the teacher-feature cache, a saved search index)."""
from __future__ import annotations

import hashlib

import torch
from torch import nn


def state_hash(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's state: the names, shapes, dtypes and bytes of every tensor
    of its ``state_dict``, in name order. Independent of the device and the memory format
    (channels-last tensors are hashed in their contiguous layout)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
