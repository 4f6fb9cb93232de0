"""What both VKD engines share, on top of torchreid's ``Engine``.

torchreid's ``Engine.run`` loop (epochs, evaluation frequency, TensorBoard, ETA printing) is
reused as is. Replaced: ``test`` (our protocols: I2V/V2V/I2I/V2I with our fast ranking and
``results.json``), ``save_model`` (atomic, ``weights_only``-safe checkpoints, with RNG state),
and ``train`` gains an end-of-epoch hook (latest checkpoint, skipped-frame report).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from vkd_torchreid import evaluation
from vkd_torchreid.compat import Engine, re_ranking, visualize_ranked_results
from vkd_torchreid.data.base import MODES, first_frames
from vkd_torchreid.engine import checkpoint as ckpt_io
from vkd_torchreid.engine.extract import Features, autocast, concat, extract, to_device

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
LOSSES_FILE = "losses.jsonl"
CHECKPOINT_DIR = "model"


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; nothing was stepped or saved with it."""


class StopTraining(KeyboardInterrupt):
    """Raised at a batch boundary after SIGINT/SIGTERM, once a checkpoint is written."""


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Settings shared by both engines (see ``config.engine_options``)."""

    use_gpu: bool = True
    amp: str = ""  # '', 'bf16', 'fp16' for training
    channels_last: bool = False
    test_amp: str = ""
    test_chunk: int = 256  # frames per forward pass at test time
    dist_metric: str = "cosine"
    ranks: Tuple[int, ...] = (1, 5, 10, 20)
    label_smooth: float = 0.0
    triplet_margin: Any = "soft"  # 'soft' or a float
    weight_x: float = 1.0
    weight_t: float = 1.0
    generation: int = 0
    progress: bool = False


class VKDEngineBase(Engine):
    """Common machinery; subclasses implement :meth:`forward_train` and :meth:`compute_losses`."""

    stage = ""

    def __init__(self, datamanager: Any, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, options: EngineOptions) -> None:
        super().__init__(datamanager, use_gpu=options.use_gpu)
        self.options = options
        self.device = torch.device("cuda" if self.use_gpu else "cpu")
        self.model = self._place(model)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", self.model, optimizer, scheduler)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=options.amp == "fp16")
        self.generation = options.generation
        self.save_dir = "log"
        self.completed_epochs = 0
        self.global_step = 0
        self.skipped_frames: List[str] = []
        self.results: Dict[str, Any] = {}
        self._stop_signal: Optional[int] = None
        self._latest_epoch = -1
        self._epoch_sums: Dict[str, float] = {}
        self._epoch_steps = 0

    # ------------------------------------------------------------------ devices & formats
    def _place(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _format(self, img: torch.Tensor) -> torch.Tensor:
        return to_device(img, self.device, self.options.channels_last)

    # ------------------------------------------------------------------ training
    def forward_train(self, imgs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Model outputs for a batch ``[B, N, C, H, W]`` (inside autocast)."""
        raise NotImplementedError

    def compute_losses(self, outputs: Dict[str, torch.Tensor],
                       pids: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Named scalar losses, ``loss`` being the one to minimise (float32)."""
        raise NotImplementedError

    def forward_backward(self, data: Dict[str, Any]) -> Dict[str, float]:
        if self._stop_signal is not None:
            raise StopTraining(f"signal {self._stop_signal}")
        self.skipped_frames.extend(data.get("skipped", ()))
        imgs = self._format(data["img"])
        pids = data["pid"].to(self.device, non_blocking=True)
        with autocast(self.device, self.options.amp):
            outputs = self.forward_train(imgs)
        losses = self.compute_losses({k: v.float() for k, v in outputs.items()}, pids)
        self._check_finite(losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        values = {k: float(v.detach()) for k, v in losses.items()}
        for k, v in values.items():
            self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
        self._epoch_steps += 1
        return values

    def _check_finite(self, losses: Dict[str, torch.Tensor]) -> None:
        values = {k: float(v.detach()) for k, v in losses.items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            terms = [k for k in bad if k != "loss"] or bad
            raise NonFiniteLossError(
                f"non-finite loss {', '.join(f'{k}={values[k]}' for k in terms)} at epoch "
                f"{self.epoch + 1}, step {self.global_step + 1} (batch {self.batch_idx + 1}); "
                "no update was made and no checkpoint was written with it")

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0,
              open_layers: Optional[Sequence[str]] = None) -> None:
        self.skipped_frames = []
        self._epoch_sums, self._epoch_steps = {}, 0
        super().train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)
        self.completed_epochs = self.epoch + 1
        self._log_epoch_losses()
        if self.skipped_frames:
            logger.warning("epoch %d: %d unreadable frame(s) were replaced by other frames of "
                           "their tracklets: %s", self.epoch + 1, len(self.skipped_frames),
                           ", ".join(sorted(set(self.skipped_frames))[:10]))
        self.save_latest()

    def _log_epoch_losses(self) -> None:
        """Appends the epoch's mean losses to ``<save_dir>/losses.jsonl`` (one line per epoch)."""
        steps = max(self._epoch_steps, 1)
        row = {"epoch": self.completed_epochs, "generation": self.generation,
               "steps": self._epoch_steps, "lr": self.get_current_lr(),
               **{k: v / steps for k, v in self._epoch_sums.items()}}
        os.makedirs(self.save_dir, exist_ok=True)
        with open(os.path.join(self.save_dir, LOSSES_FILE), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        logger.info("epoch %d: %s", self.completed_epochs, "  ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k.startswith("loss")))

    def run(self, save_dir: str = "log", **kwargs: Any) -> None:
        """torchreid's ``Engine.run``; SIGINT/SIGTERM stop it cleanly with a checkpoint."""
        self.save_dir = save_dir
        previous = {}

        def _handler(signum: int, _frame: Any) -> None:
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread signals cannot be caught: leave them alone.
            with contextlib.suppress(ValueError):
                previous[sig] = signal.signal(sig, _handler)
        try:
            super().run(save_dir=save_dir, **kwargs)
        except StopTraining:
            path = self.save_latest()
            logger.warning("stopped by signal %s; checkpoint of the last completed epoch at %s",
                           self._stop_signal, path)
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------------ checkpoints
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
        return ckpt_io.to_plain(state)

    def _checkpoint_dir(self) -> str:
        return os.path.join(self.save_dir, CHECKPOINT_DIR)

    def save_latest(self) -> str:
        """Writes ``latest.pth.tar`` for the last completed epoch (atomic), once per epoch."""
        path = os.path.join(self._checkpoint_dir(), ckpt_io.LATEST_NAME)
        if self._latest_epoch != self.completed_epochs or not os.path.exists(path):
            ckpt_io.atomic_save(self.checkpoint_state(self.completed_epochs, 0.0), path)
            self._latest_epoch = self.completed_epochs
        return path

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
        path = os.path.join(save_dir, CHECKPOINT_DIR, f"{ckpt_io.CHECKPOINT_PREFIX}{epoch + 1}")
        ckpt_io.atomic_save(self.checkpoint_state(epoch + 1, rank1), path)
        logger.info("checkpoint saved to %s", path)

    def resume(self, path: str, trust: bool = False) -> int:
        """Restores model, optimizer, scheduler, scaler, epoch and RNG; returns the start epoch."""
        state = ckpt_io.load_checkpoint(path, trust=trust)
        meta = state.get("meta", {})
        ours = self.model_meta()
        for key in ("arch", "num_classes"):
            if meta.get(key) is not None and meta.get(key) != ours[key]:
                raise ValueError(f"cannot resume from {path}: it holds {key}={meta[key]!r}, "
                                 f"the config builds {key}={ours[key]!r}")
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            ckpt_io.restore_rng(state["rng"])
        self.global_step = int(state.get("global_step", 0))
        self.completed_epochs = int(state["epoch"])
        self._latest_epoch = self.completed_epochs
        logger.info("resumed from %s at epoch %d", path, self.completed_epochs)
        return self.completed_epochs

    # ------------------------------------------------------------------ evaluation
    def test(self, dist_metric: str = "cosine", normalize_feature: bool = False,
             visrank: bool = False, visrank_topk: int = 10, save_dir: str = "",
             use_metric_cuhk03: bool = False, ranks: Sequence[int] = (1, 5, 10, 20),
             rerank: bool = False) -> float:
        """Evaluates every target with its protocol; writes ``results.json``; returns rank-1."""
        if use_metric_cuhk03:
            raise NotImplementedError("the cuhk03 metric does not apply to VKD datasets")
        self.set_model_mode("eval")
        save_dir = save_dir or self.save_dir
        results: Dict[str, Any] = {"stage": self.stage, "generation": self.generation,
                                   "epoch": self.completed_epochs}
        rank1 = 0.0
        for i, name in enumerate(self.datamanager.targets):
            per_mode = self.evaluate_dataset(name, dist_metric, tuple(ranks), rerank,
                                             visrank, visrank_topk, save_dir)
            results[name] = per_mode
            for mode, metrics in per_mode.items():
                logger.info("%s %-10s %s", name, mode, "  ".join(
                    f"{k} {v:.1%}" for k, v in metrics.items()))
                if self.writer is not None:
                    for k, v in metrics.items():
                        self.writer.add_scalar(f"Test/{name}/{mode}/{k}", v, self.epoch)
            if i == 0 and per_mode:
                rank1 = next(iter(per_mode.values()))["rank1"]
        self.results = results
        if save_dir:
            write_json(results, os.path.join(save_dir, RESULTS_FILE))
        return rank1

    def _features(self, loader: Any, desc: str) -> Features:
        return extract(self.model, loader, self.device, self.options.test_amp,
                       self.options.channels_last, self.options.test_chunk,
                       self.options.progress, desc)

    def dataset_features(self, name: str) -> Dict[str, Features]:
        """Features of every split the protocol of ``name`` needs, each extracted once."""
        loaders = self.datamanager.test_loader[name]
        items = self.datamanager.test_dataset[name]
        feats: Dict[str, Features] = {}
        for kind in ("query", "gallery", "gallery_img"):
            if loaders.get(kind) is not None:
                feats[kind] = self._features(loaders[kind], f"{name} {kind}")
        if loaders.get("query_img") is not None:
            # MARS/Duke image queries are the first frames of the query tracklets: reuse them.
            if "query" in feats and list(items["query_img"]) == first_frames(items["query"]):
                q = feats["query"]
                feats["query_img"] = Features(q.first, q.first, q.pids, q.camids)
            elif list(items["query_img"]) == list(items.get("gallery_img") or []):
                feats["query_img"] = feats["gallery_img"]
            else:
                feats["query_img"] = self._features(loaders["query_img"], f"{name} query_img")
        return feats

    def evaluate_dataset(self, name: str, dist_metric: str = "cosine",
                         ranks: Tuple[int, ...] = (1, 5, 10, 20), rerank: bool = False,
                         visrank: bool = False, visrank_topk: int = 10,
                         save_dir: str = "") -> Dict[str, Dict[str, float]]:
        """Metrics of every evaluation mode of dataset ``name``."""
        protocol = self.datamanager.protocols[name]
        feats = self.dataset_features(name)
        if protocol.junk == "atrw":
            meta = self.datamanager.test_meta(name)
            g = feats["gallery_img"]
            out = evaluation.atrw_plain_protocol(
                g.emb.numpy(), g.pids, meta["frame_group"], meta["frame"], meta["query_type"])
            return {f"I2I_{k}": v for k, v in out.items()}
        results: Dict[str, Dict[str, float]] = {}
        for mode in protocol.modes:
            q_kind, g_kind = MODES[mode]
            q, g = feats[q_kind], feats[g_kind]
            if protocol.query_in_gallery:
                g = concat(feats["query" if g_kind == "gallery" else "query_img"], g)
            distmat = evaluation.compute_distance_matrix(q.emb, g.emb, metric=dist_metric)
            if rerank:
                qq = evaluation.compute_distance_matrix(q.emb, q.emb, metric=dist_metric)
                gg = evaluation.compute_distance_matrix(g.emb, g.emb, metric=dist_metric)
                distmat = re_ranking(distmat, qq, gg)
            results[mode] = evaluation.rank_all(distmat, q.pids, g.pids, q.camids, g.camids,
                                                ranks=ranks)
            if visrank:
                self._visrank(name, mode, distmat, q_kind, g_kind, visrank_topk, save_dir)
        return results

    def _visrank(self, name: str, mode: str, distmat: np.ndarray, q_kind: str, g_kind: str,
                 topk: int, save_dir: str) -> None:
        items = self.datamanager.test_dataset[name]
        protocol = self.datamanager.protocols[name]
        gallery = list(items[g_kind])
        if protocol.query_in_gallery:
            gallery = list(items["query" if g_kind == "gallery" else "query_img"]) + gallery
        visualize_ranked_results(
            distmat, (list(items[q_kind]), gallery), "video",
            width=self.datamanager.width, height=self.datamanager.height,
            save_dir=os.path.join(save_dir, f"visrank_{name}_{mode}"), topk=topk)


def write_json(obj: Any, path: str) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)
