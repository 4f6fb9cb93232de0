"""Checkpoints in torchreid's layout, safe to load with ``weights_only=True``, written atomically.

A checkpoint is ``{"state_dict", "epoch", "rank1", "optimizer", "scheduler"}`` as torchreid
writes it, plus ``rng`` (torch, CUDA, numpy and Python random states), ``scaler`` and a
``meta`` dict (stage, generation, arch, num_classes). Everything is a tensor or a plain
Python value: numpy RNG arrays become tensors, numpy scalars become Python numbers, and the
``Counter`` of MultiStepLR becomes a dict (restored on load).
"""
from __future__ import annotations

import collections
import contextlib
import glob
import logging
import os
import pickle
import random
import re
import tempfile
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from vkd_torchreid.utils import filetype

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "model.pth.tar-"
LATEST_NAME = "latest.pth.tar"
_COUNTER_TAG = "__counter__"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message (one line) names the file, what it
    is and what was expected."""


def to_plain(obj: Any) -> Any:
    """Converts numpy values and Counters so that ``torch.load(weights_only=True)`` accepts them."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, collections.Counter):
        return {_COUNTER_TAG: {k: to_plain(v) for k, v in obj.items()}}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain` for the Counters it tagged."""
    if isinstance(obj, dict):
        if set(obj) == {_COUNTER_TAG}:
            return collections.Counter(obj[_COUNTER_TAG])
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    return obj


def capture_rng() -> Dict[str, Any]:
    """The state of every random generator training uses, as plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "random": list(random.getstate()[1]) + [random.getstate()[0]],
        "random_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Restores what :func:`capture_rng` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    rnd = state["random"]
    random.setstate((rnd[-1], tuple(rnd[:-1]), state["random_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A failure (full disk, I/O error) leaves any previous file at ``path`` untouched and raises
    :class:`CheckpointError` naming the path.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, (OSError, RuntimeError, pickle.PicklingError)):
            raise CheckpointError(f"could not write checkpoint {path}: {exc}; the previous "
                                  "checkpoint (if any) is unchanged") from exc
        raise


#: What a "cannot read" message says was expected.
EXPECTED = ("expected a PyTorch checkpoint (a file written by torch.save: ours, torchreid's or a "
            "state dict)")
#: ... when the file is a checkpoint, but not whole.
EXPECTED_WHOLE = "expected the whole file torch.save wrote; copy or download it again"
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _unreadable(path: str, what: str, expected: str = EXPECTED) -> CheckpointError:
    return CheckpointError(f"{path} is {what}; {expected}")


def _check_container(path: str) -> None:
    """Refuses, before ``torch.load``, a file that cannot be a checkpoint: empty, text, an
    image, an archive of another kind, a zip archive cut short or without ``data.pkl``."""
    kind = filetype.sniff(path)
    if kind.kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise _unreadable(path, f"a truncated or damaged PyTorch checkpoint (a zip archive of "
                                    f"{kind.size} bytes without a readable zip directory at its "
                                    "end)", EXPECTED_WHOLE) from exc
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise _unreadable(path, f"a zip archive of {len(names)} files without data.pkl, not "
                                    "a PyTorch checkpoint")
    elif kind.kind != "pickle":
        raise _unreadable(path, kind.what if kind.kind != "text" else
                          f"{kind.what}, not a checkpoint")


def _damaged(path: str, exc: BaseException) -> CheckpointError:
    reason = _first_line(exc) or "the file ends early"
    return _unreadable(path, f"a truncated or damaged PyTorch checkpoint ({os.path.getsize(path)} "
                             f"bytes; {type(exc).__name__}: {reason})", EXPECTED_WHOLE)


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message ('' if it has none)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def load_checkpoint(path: str, trust: bool = False) -> Dict[str, Any]:
    """Loads a checkpoint on the CPU with ``weights_only=True``.

    What cannot be a checkpoint (empty, text, an image, another archive, a zip archive cut
    short) is refused from its first bytes, before ``torch.load`` parses it. Only a real
    pickled checkpoint whose objects ``weights_only`` refuses is told about ``trust``.

    Args:
        path: the checkpoint file.
        trust: allow a legacy pickled checkpoint (``weights_only=False``); only for files
            from a source you trust.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: one line naming ``path``, what it is and what was expected.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        _check_container(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        name = _GLOBAL.search(str(exc))
        if name is None:
            raise _damaged(path, exc) from exc
        if not trust:
            raise _unreadable(
                path, f"a legacy pickled checkpoint holding objects (such as {name.group(1)}) "
                "that torch.load(weights_only=True) refuses to load",
                "if you trust its source, pass --trust-checkpoint (model.trust_checkpoint "
                "True)") from exc
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as again:  # any failure of a trusted pickle
            raise CheckpointError(f"cannot read {path} even with --trust-checkpoint: "
                                  f"{type(again).__name__}: {_first_line(again)}") from again
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    except Exception as exc:  # torch.load's errors on a damaged file vary
        raise _damaged(path, exc) from exc
    return from_plain(ckpt) if isinstance(ckpt, dict) else ckpt


#: What a training checkpoint holds beyond a network's weights (what resuming needs).
TRAINING_KEYS = ("state_dict", "optimizer", "epoch")


def load_training_checkpoint(path: str, trust: bool = False,
                             key: str = "--resume") -> Dict[str, Any]:
    """A run's checkpoint to resume from (:func:`load_checkpoint`, with ``state_dict``,
    ``optimizer`` and ``epoch``); errors name the file after ``key`` (where it came from:
    ``--resume`` or ``model.resume``).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable (see :func:`load_checkpoint`), or a network's weights
            without the training state.
    """
    try:
        ckpt = load_checkpoint(path, trust=trust)
    except CheckpointError as exc:
        raise CheckpointError(f"{key} {exc}") from exc
    missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{key} {path} holds no training state ({', '.join(missing)} missing), only "
            "a network's weights; expected a run's checkpoint (<save_dir>/model/"
            f"{LATEST_NAME}); to start a run from these weights set model.load_weights")
    return ckpt


def checkpoint_epoch(path: str) -> int:
    """Epoch number in a ``model.pth.tar-<epoch>`` file name (-1 if none)."""
    match = re.search(re.escape(CHECKPOINT_PREFIX) + r"(\d+)$", os.path.basename(path))
    return int(match.group(1)) if match else -1


def find_latest(save_dir: str) -> Optional[str]:
    """The newest checkpoint below ``save_dir``: ``latest.pth.tar`` or the highest epoch."""
    latest = sorted(glob.glob(os.path.join(save_dir, "**", LATEST_NAME), recursive=True),
                    key=os.path.getmtime)
    if latest:
        return latest[-1]
    numbered = glob.glob(os.path.join(save_dir, "**", CHECKPOINT_PREFIX + "*"), recursive=True)
    numbered = [p for p in numbered if checkpoint_epoch(p) >= 0]
    return max(numbered, key=lambda p: (checkpoint_epoch(p), os.path.getmtime(p))) if numbered else None


def has_checkpoints(save_dir: str) -> bool:
    """Whether ``save_dir`` already holds checkpoints of a run."""
    return find_latest(save_dir) is not None


def read_state_dict(path: str, trust: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The state dict (``module.`` prefixes stripped) and the ``meta`` dict (with ``epoch``) of
    a checkpoint: ours, torchreid's, or a bare state dict.

    Raises:
        FileNotFoundError, CheckpointError: see :func:`load_checkpoint`; also a
            CheckpointError when the file holds no state dict.
    """
    ckpt = load_checkpoint(path, trust=trust)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        held = f"a {type(state).__name__}" if not isinstance(state, dict) else \
            "a dict that is not all tensors"
        raise CheckpointError(f"{path} is a PyTorch file holding {held}, not a network's "
                              "weights; expected a state dict (a dict of tensors) or a "
                              "checkpoint with a 'state_dict'")
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    meta = dict(meta) if isinstance(meta, dict) else {}
    if isinstance(ckpt, dict) and isinstance(ckpt.get("epoch"), int):
        meta.setdefault("epoch", ckpt["epoch"])
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, meta
