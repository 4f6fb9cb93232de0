"""Checkpoints of an engine: what they hold, the latest one after every epoch, numbered ones,
and resuming (model, optimizer, scheduler, scaler, epoch and every random state).

Under torchrun every rank builds the checkpoint (the random states of all ranks are gathered
into it: ``rng_ranks``) and rank 0 alone writes it; every rank resumes from the same file and
takes back its own random state."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

from vkd_torchreid.utils import checkpoint as ckpt_io
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.logs import one_line

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "model"


class CheckpointMixin:
    """Checkpointing for :class:`~vkd_torchreid.engine.base.VKDEngineBase` (which provides
    ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``save_dir``, ``completed_epochs``,
    ``global_step``, ``stage`` and ``generation``)."""

    def model_meta(self) -> Dict[str, Any]:
        return {
            "stage": self.stage,
            "generation": self.generation,
            "arch": getattr(self.model, "arch", type(self.model).__name__),
            "num_classes": getattr(self.model, "num_classes", None),
        }

    def checkpoint_state(self, epoch: int, rank1: float) -> Dict[str, Any]:
        """The checkpoint dict after ``epoch`` completed epochs."""
        state = {
            "state_dict": self.model.state_dict(),
            "epoch": int(epoch),
            "rank1": float(rank1),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": ckpt_io.capture_rng(),
            "global_step": self.global_step,
            "meta": self.model_meta(),
        }
        if self.dist.enabled:  # a collective: every rank builds the checkpoint
            state["rng_ranks"] = distributed.gather_objects(state["rng"])
        return ckpt_io.to_plain(state)

    def _checkpoint_dir(self) -> str:
        return os.path.join(self.save_dir, CHECKPOINT_DIR)

    def save_latest(self) -> str:
        """Writes ``latest.pth.tar`` for the last completed epoch (atomic), once per epoch."""
        path = os.path.join(self._checkpoint_dir(), ckpt_io.LATEST_NAME)
        needed = self._latest_epoch != self.completed_epochs or not os.path.exists(path)
        if distributed.broadcast_object(needed):  # rank 0's view: the same on every rank
            state = self.checkpoint_state(self.completed_epochs, 0.0)
            if self.dist.is_main:
                ckpt_io.atomic_save(state, path)
            self._latest_epoch = self.completed_epochs
        return path

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
        path = os.path.join(save_dir, CHECKPOINT_DIR, f"{ckpt_io.CHECKPOINT_PREFIX}{epoch + 1}")
        state = self.checkpoint_state(epoch + 1, rank1)
        if self.dist.is_main:
            ckpt_io.atomic_save(state, path)
            logger.info("checkpoint saved to %s", path)

    def resume(self, path: str, trust: bool = False, key: str = "--resume") -> int:
        """Restores model, optimizer, scheduler, scaler, epoch and RNG; returns the start epoch.
        ``key``: where ``path`` came from, for messages."""
        state = ckpt_io.load_training_checkpoint(path, trust=trust, key=key)
        meta = state.get("meta", {})
        ours = self.model_meta()
        for key in ("arch", "num_classes"):
            if meta.get(key) is not None and meta.get(key) != ours[key]:
                raise ValueError(f"cannot resume from {path}: it holds {key}={meta[key]!r}, "
                                 f"the config builds {key}={ours[key]!r}")
        try:
            self.model.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot resume from {path}: its weights or optimizer do not fit "
                             f"the config's {ours['arch']} with {ours['num_classes']} classes "
                             f"({type(exc).__name__}: {one_line(exc)})") from exc
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks") or []
        if self.dist.enabled and len(ranks) == self.dist.world_size:
            ckpt_io.restore_rng(ranks[self.dist.rank])
        elif self.dist.enabled:
            logger.warning("%s holds the random state of %d rank(s), not %d: each rank "
                           "continues from a random state of its own", path, len(ranks),
                           self.dist.world_size)
            ckpt_io.restore_rng(state["rng"])
            distributed.seed_rank(int(state.get("global_step", 0)))
        elif "rng" in state:
            ckpt_io.restore_rng(state["rng"])
        self.global_step = int(state.get("global_step", 0))
        self.completed_epochs = int(state["epoch"])
        self._latest_epoch = self.completed_epochs
        logger.info("resumed from %s at epoch %d", path, self.completed_epochs)
        return self.completed_epochs
