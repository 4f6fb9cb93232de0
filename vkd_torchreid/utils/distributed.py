"""torch.distributed for runs launched by ``torchrun``: the process group, who writes, and the
few collectives the engines need.

``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``) starts one process per device; :func:`init` joins them.
Without that environment, or with a world of one, nothing here talks to anyone and every
helper is the identity, so a single process runs exactly as without this module.

Errors that one rank finds (a bad config, an existing save dir) must stop every rank, each
with a non-zero exit, and only rank 0 prints: :func:`agree` all-gathers the ranks' errors and
raises the first one everywhere (:class:`DistributedError` on the ranks that found nothing).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import re
import warnings
from typing import Any, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from vkd_torchreid.utils.seeding import set_seed

logger = logging.getLogger(__name__)

#: Values of ``train.dist_backend``.
DIST_BACKENDS = ("auto", "nccl", "gloo")
#: Timeout of the barrier behind which the other ranks wait for rank 0's long work (the
#: teacher cache build): a MARS build takes far longer than any training step.
LONG_TIMEOUT_S = 24 * 3600


class DistributedError(RuntimeError):
    """Another rank failed; this one stops too (its own message is rank 0's)."""


#: What the backends say when a collective fails because another rank stopped answering or
#: ended (gloo's "Timed out waiting 10000ms for recv operation to complete", "Connection
#: closed by peer"; nccl's watchdog).
_COLLECTIVE_FAILURE = re.compile(r"timed out waiting|connection closed by peer|connection "
                                 r"reset by peer|nccl|gloo", re.IGNORECASE)


def collective_failure(exc: BaseException) -> Optional[str]:
    """One line for an error raised by a collective of the process group (a timeout, a rank
    that ended), with the backend's own words; None for any other error or without a group."""
    ctx = context()
    if not ctx.enabled or isinstance(exc, DistributedError):
        return None
    dist_error = getattr(dist, "DistError", RuntimeError)
    if not isinstance(exc, (dist_error, RuntimeError)) or (
            not isinstance(exc, dist_error) and not _COLLECTIVE_FAILURE.search(str(exc))):
        return None
    line = next((x.strip() for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # gloo's "[file.cc:78] " prefix
    return (f"rank {ctx.rank}: a collective of the process group failed: {line}; another rank "
            "stopped answering or ended (train.dist_timeout_s bounds the wait)")


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        """More than one process: collectives are real."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only writer of files and the only one that prints."""
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` of the launcher's environment (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def resolve_backend(requested: str, use_gpu: bool) -> str:
    """``train.dist_backend``: 'auto' is nccl with CUDA, gloo otherwise.

    Raises:
        ValueError: an unknown name, or nccl on a machine (or config) without CUDA.
    """
    if requested not in DIST_BACKENDS:
        raise ValueError(f"train.dist_backend={requested!r}: expected one of {DIST_BACKENDS}")
    cuda = use_gpu and torch.cuda.is_available()
    if requested == "auto":
        return "nccl" if cuda else "gloo"
    if requested == "nccl" and not cuda:
        raise ValueError("train.dist_backend nccl needs CUDA, which this process does not have "
                         "(no GPU, or use_gpu False); use gloo or auto")
    return requested


def context() -> DistContext:
    """The current process group's view (a single process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", "0") or 0), dist.get_backend())


def init(backend: str = "auto", timeout_s: float = 1800.0, use_gpu: bool = True) -> DistContext:
    """Joins the launcher's process group (once); a single process without one.

    With nccl, the process's GPU is ``LOCAL_RANK`` (set before the group is created).
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return context()
    name = resolve_backend(backend, use_gpu)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if name == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(name, timeout=datetime.timedelta(seconds=timeout_s))
    ctx = context()
    logger.debug("rank %d of %d joined (%s)", ctx.rank, ctx.world_size, name)
    return ctx


def seed_rank(seed: int) -> None:
    """Seeds this process's global generators from (``seed``, rank): the augmentations of the
    ranks differ (the batch draws do not use them: see the sampler). The plain seed in a
    single process."""
    rank = context().rank
    set_seed(seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def shutdown() -> None:
    """Leaves the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(error: Optional[str]) -> None:
    """Every rank calls this with its own error (None when fine); if any rank has one, every
    rank raises: the first failing rank's message as ``ValueError`` on that rank and on rank 0
    (which prints it), :class:`DistributedError` on the others."""
    ctx = context()
    if not ctx.enabled:
        if error:
            raise ValueError(error)
        return
    errors: List[Optional[str]] = [None] * ctx.world_size
    dist.all_gather_object(errors, error)
    first = next(((r, e) for r, e in enumerate(errors) if e), None)
    if first is None:
        return
    rank, message = first
    if ctx.rank in (0, rank):
        raise ValueError(message if rank == 0 else f"rank {rank}: {message}")
    raise DistributedError(f"rank {rank} failed: {message}")


def config_hash(text: str) -> str:
    """Hash of a resolved config's dump (compared across ranks)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_same_config(text: str) -> None:
    """Every rank must have resolved the same config as rank 0 (:func:`agree` otherwise)."""
    ctx = context()
    if not ctx.enabled:
        return
    mine = config_hash(text)
    hashes: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(hashes, mine)
    bad = [r for r, h in enumerate(hashes) if h != hashes[0]]
    agree(f"the resolved config differs between ranks (ranks {bad} vs rank 0: config hash "
          f"{hashes[bad[0]]} vs {hashes[0]}); launch every rank with the same config file, "
          "overrides and environment" if bad else None)


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order, differentiable: the
    gradient of each rank's slot flows back to that rank (summed over the ranks that used it).
    Every rank's ``t`` must have the same shape. The identity in a single process."""
    ctx = context()
    if not ctx.enabled:
        return t
    if not torch.is_grad_enabled() or not t.requires_grad:
        return all_gather(t)
    from torch.distributed.nn.functional import all_gather as differentiable_all_gather

    with warnings.catch_warnings():  # deprecated for a private successor; still the public one
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(differentiable_all_gather(t.contiguous()), 0)


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (same shape) concatenated along dim 0 in rank order, no gradient."""
    ctx = context()
    if not ctx.enabled:
        return t
    out = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t.detach().contiguous())
    return torch.cat(out, 0)


def gather_objects(obj: Any) -> Optional[List[Any]]:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (a list of one in a
    single process)."""
    ctx = context()
    if not ctx.enabled:
        return [obj]
    out: Optional[List[Any]] = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not context().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Waits for every rank (the process group's timeout)."""
    if context().enabled:
        dist.barrier()


_LONG_GROUP: Any = None


def long_barrier() -> None:
    """Waits for every rank with a timeout of :data:`LONG_TIMEOUT_S`: the other ranks wait here
    while rank 0 does long work (a gloo group of its own, so it also works beside nccl)."""
    global _LONG_GROUP
    if not context().enabled:
        return
    if _LONG_GROUP is None:
        _LONG_GROUP = dist.new_group(backend="gloo",
                                     timeout=datetime.timedelta(seconds=LONG_TIMEOUT_S))
    dist.barrier(group=_LONG_GROUP)
