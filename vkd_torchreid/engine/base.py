"""What both VKD engines share, on top of torchreid's ``Engine``.

Reused from torchreid: the per-epoch loop over batches (``Engine.train``: timing, progress
lines, TensorBoard scalars, the scheduler step), model registration and ``set_model_mode``.
Our own: the run loop (torchreid's has no callbacks and cannot stop early; ours calls the
end-of-epoch callbacks of :mod:`vkd_torchreid.engine.callbacks`), ``test`` (the
:class:`~vkd_torchreid.engine.evaluator.Evaluator`: our protocols, fast ranking,
``results.json``), ``save_model`` (atomic, ``weights_only``-safe checkpoints with the RNG
state), a NaN guard and a clean stop on SIGINT/SIGTERM.

What torchreid's loop (``Engine.train``) uses of an engine, all set here: ``train_loader``
(``len`` and iteration; a :class:`~vkd_torchreid.data.transforms.FinishingLoader` of
:class:`~vkd_torchreid.data.batch.Batch`), ``forward_backward(batch)``, ``epoch``,
``max_epoch``, ``batch_idx``, ``num_batches``, ``writer``, ``get_current_lr``/``update_lr``
(the registered optimiser and scheduler) and ``set_model_mode``. The epoch reaches the batch
sampler through ``train_loader.set_epoch`` before each epoch.

Under torchrun (:mod:`vkd_torchreid.utils.distributed`) the trained network's forward runs
through ``DistributedDataParallel``; with ``train.dist_gather`` the triplet and
distance-preservation losses see the global batch (embeddings gathered with their
gradients); ``train.sync_bn`` synchronises BatchNorm. Every step all-reduces the loss values,
the decoded-frame count and a stop flag in one collective, so every rank logs the global
means and stops at the same step. Rank 0 alone writes files.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vkd_torchreid.compat import Engine
from vkd_torchreid.data.batch import Batch
from vkd_torchreid.engine.callbacks import Callback, default_callbacks
from vkd_torchreid.engine.checkpointing import CheckpointMixin
from vkd_torchreid.engine.evaluator import Evaluator
from vkd_torchreid.engine.loss_values import check_finite, synced_values
from vkd_torchreid.engine.options import EngineOptions
from vkd_torchreid.engine.stopping import (
    StopTraining,
    install_stop_handlers,
    restore_handlers,
)
from vkd_torchreid.models.sync_bn import convert_sync_batchnorm
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.device import AUTOCAST_DTYPES, autocast, place, send, to_device
from vkd_torchreid.utils.timing import TimedIterable

logger = logging.getLogger(__name__)


class _TrainForward(nn.Module):
    """A network's training forward (``forward_features``) as a module's ``forward``, the one
    call ``DistributedDataParallel`` synchronises gradients for."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model.forward_features(x)


class VKDEngineBase(CheckpointMixin, Engine):
    """Common machinery; subclasses implement :meth:`forward_train` and :meth:`compute_losses`.

    Args:
        datamanager: the VKD data manager (its ``train_loader``).
        model: the network being trained.
        optimizer, scheduler: its optimiser and learning-rate scheduler.
        options: see :class:`EngineOptions`.
        evaluator: the test path (``test`` needs it).
        generation: 0 for the teacher stage and the first student generation.
        callbacks: run after every epoch, in order (default: :func:`default_callbacks`).
    """

    stage = ""

    def __init__(self, datamanager: Any, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, options: EngineOptions, evaluator: Optional[Evaluator] = None,
                 generation: int = 0, callbacks: Optional[Sequence[Callback]] = None) -> None:
        super().__init__(datamanager, use_gpu=options.use_gpu)
        self.options = options
        #: This process's place under torchrun (a single process without it).
        self.dist = distributed.context()
        self.device = (torch.device("cuda", torch.cuda.current_device()) if self.use_gpu
                       else torch.device("cpu"))
        self.model = self._place(model)
        self._ddp: Optional[nn.Module] = None
        if self.dist.enabled:
            if options.sync_bn:
                self.model = convert_sync_batchnorm(self.model, self.device.type)
            self._ddp = DistributedDataParallel(
                _TrainForward(self.model),
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", self.model, optimizer, scheduler)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=options.amp == "fp16")
        self.evaluator = evaluator
        self.generation = generation
        self.callbacks: List[Callback] = list(default_callbacks() if callbacks is None
                                              else callbacks)
        self.save_dir = "log"
        self.batch_idx = 0
        self.max_epoch = 0
        self.completed_epochs = 0
        self.global_step = 0
        self.skipped_frames: List[str] = []
        self.results: Dict[str, Any] = {}
        self.stop_reason = ""
        self._stop_signal: Optional[int] = None
        self._latest_epoch = -1
        self._epoch_sums: Dict[str, float] = {}
        self._epoch_steps = 0
        self._epoch_decoded = 0
        self._epoch_times = (0.0, 0.0)  # the last epoch's (wall, data wait) seconds
        self._stop_agreed = False

    # ------------------------------------------------------------------ devices & formats
    def _place(self, model: nn.Module) -> nn.Module:
        return place(model, self.device, self.options.channels_last)

    @property
    def _input_dtype(self) -> torch.dtype:
        """The dtype a batch finished on the device gets: the step's autocast dtype (what
        autocast would give the first layer), float32 without autocast."""
        return AUTOCAST_DTYPES.get(self.options.amp, torch.float32)

    def _format(self, img: torch.Tensor) -> torch.Tensor:
        return to_device(img, self.device, self.options.channels_last)

    def train_forward(self, imgs: torch.Tensor) -> Any:
        """The trained network's ``forward_features`` (through DDP under torchrun)."""
        if self._ddp is not None:
            return self._ddp(imgs)
        return self.model.forward_features(imgs)

    def global_batch(self, *tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Under torchrun with ``train.dist_gather``: every rank's tensors in rank order (the
        global batch; gradients flow back to their rank). Otherwise the tensors themselves."""
        if not (self.dist.enabled and self.options.dist_gather):
            return tensors
        return tuple(distributed.all_gather_with_grad(t) for t in tensors)

    # ------------------------------------------------------------------ training
    def forward_train(self, imgs: torch.Tensor, batch: Batch) -> Dict[str, torch.Tensor]:
        """Model outputs for a batch ``imgs [B, V, C, H, W]`` on the device (inside autocast);
        ``batch`` is the loader's (``pid``, and ``student`` / ``teacher_rows`` when the
        sampler drew the student's frames)."""
        raise NotImplementedError

    def compute_losses(self, outputs: Dict[str, torch.Tensor],
                       pids: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Named scalar losses, ``loss`` being the one to minimise (float32)."""
        raise NotImplementedError

    def forward_backward(self, data: Batch) -> Dict[str, float]:
        """One optimisation step on a finished batch; returns the loss values."""
        if self._stop_agreed or (self._stop_signal is not None and not self.dist.enabled):
            raise StopTraining(f"signal {self._stop_signal or 'on another rank'}")
        self.skipped_frames.extend(data.skipped)
        imgs = data.device_images(self.device, self.options.channels_last, self._input_dtype)
        pids = send(data.pid, self.device)
        with autocast(self.device, self.options.amp):
            outputs = self.forward_train(imgs, data)
        losses = self.compute_losses({k: v.float() for k, v in outputs.items()}, pids)
        decoded = data.decoded or imgs.shape[0] * imgs.shape[1]
        self.optimizer.zero_grad(set_to_none=True)
        # The backward pass is queued before the loss values are read (a host-device sync):
        # the device works while the host waits. A non-finite loss still stops the run before
        # any update: the optimiser step comes after the check.
        self.scaler.scale(losses["loss"]).backward()
        values, decoded, self._stop_agreed = synced_values(
            losses, decoded, self.dist, self._stop_signal is not None)
        check_finite(values, f"epoch {self.epoch + 1}, step {self.global_step + 1} "
                             f"(batch {self.batch_idx + 1})")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        for k, v in values.items():
            self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
        self._epoch_steps += 1
        self._epoch_decoded += decoded
        return values

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0,
              open_layers: Optional[Sequence[str]] = None) -> None:
        """One epoch (torchreid's loop over batches), its loss sums starting from zero, its
        wall time and the time its steps waited for their batches measured."""
        self.skipped_frames = []
        self._epoch_sums, self._epoch_steps, self._epoch_decoded = {}, 0, 0
        loader = self.train_loader
        self.train_loader = timed = TimedIterable(loader)  # what torchreid's loop iterates
        start = time.perf_counter()
        try:
            super().train(print_freq=print_freq, fixbase_epoch=fixbase_epoch,
                          open_layers=open_layers)
        finally:
            self.train_loader = loader
            self._epoch_times = (time.perf_counter() - start, timed.wait_s)

    def epoch_summary(self) -> Dict[str, Any]:
        """The last epoch: its number, generation, steps, frames the loader decoded, learning
        rate, wall time (``epoch_s``), the part of it the steps waited for their batches
        (``data_wait_s``: torchreid's ``data_time`` summed; this process's under torchrun) and
        mean losses."""
        steps = max(self._epoch_steps, 1)
        return {"epoch": self.completed_epochs, "generation": self.generation,
                "steps": self._epoch_steps, "frames_decoded": self._epoch_decoded,
                "lr": self.get_current_lr(), "epoch_s": self._epoch_times[0],
                "data_wait_s": self._epoch_times[1],
                **{k: v / steps for k, v in self._epoch_sums.items()}}

    def before_training(self) -> None:
        """Called once before the first epoch a run trains (nothing by default)."""

    def request_stop(self, reason: str) -> None:
        """Asks the run loop to stop after the current epoch (callbacks use it)."""
        self.stop_reason = reason

    def _callbacks(self, hook: str) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self)

    def run(self, save_dir: str = "log", max_epoch: int = 0, start_epoch: int = 0,
            print_freq: int = 10, test_only: bool = False) -> None:
        """Trains epochs ``start_epoch .. max_epoch - 1`` with the callbacks, then tests.

        SIGINT/SIGTERM stop it at the next batch after writing the latest checkpoint; during
        :meth:`before_training` (the teacher cache build) they stop it without writing one; a
        second signal (see :mod:`.stopping`) stops it at once, writing nothing.
        """
        self.save_dir = save_dir
        if test_only:
            self.test(save_dir)
            return
        previous = install_stop_handlers(lambda signum: setattr(self, "_stop_signal", signum))
        if self.writer is None and self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=save_dir)
        self.start_epoch, self.max_epoch, self.stop_reason = start_epoch, max_epoch, ""
        try:
            if max_epoch > start_epoch:
                self.before_training()
            self._callbacks("on_train_start")
            for epoch in range(start_epoch, max_epoch):
                self.epoch = epoch
                self.train_loader.set_epoch(epoch)  # draws of an epoch depend on (seed, epoch)
                self._callbacks("on_epoch_start")
                self.train(print_freq=print_freq)
                self.completed_epochs = epoch + 1
                self._callbacks("on_epoch_end")
                if self.stop_reason:
                    logger.info("%s: stopping after epoch %d (%s)", self.stage,
                                self.completed_epochs, self.stop_reason)
                    break
            self._callbacks("on_train_end")
            self.save_latest()  # a callback may have restored another epoch's state
            if max_epoch > 0:
                rank1 = self.test(save_dir)
                self.save_model(self.completed_epochs - 1, rank1, save_dir)
        except StopTraining as exc:
            if not exc.save:
                logger.warning("stopped: %s", exc)
                raise
            path = self.save_latest()
            logger.warning("stopped by signal %s; checkpoint of the last completed epoch at %s",
                           self._stop_signal, path)
            raise
        finally:
            restore_handlers(previous)
            if self.writer is not None:
                self.writer.close()
            self.writer = None

    # ------------------------------------------------------------------ evaluation
    def test(self, save_dir: str = "") -> float:
        """Evaluates every target with the Evaluator; writes ``results.json`` into
        ``save_dir`` (default: the run's); returns the first protocol's rank-1."""
        if self.evaluator is None:
            raise RuntimeError(f"this {type(self).__name__} has no Evaluator to test with")
        save_dir = save_dir or self.save_dir
        per_dataset = self.evaluator.evaluate(self.model, save_dir)
        if self.writer is not None:
            for name, per_protocol in per_dataset.items():
                for protocol, metrics in per_protocol.items():
                    for k, v in metrics.items():
                        self.writer.add_scalar(f"Test/{name}/{protocol}/{k}", v,
                                               self.completed_epochs)
        self.results = self.evaluator.write_results(per_dataset, save_dir, self.stage,
                                                    self.generation, self.completed_epochs,
                                                    self.dist.world_size)
        first = next(iter(per_dataset.values()), {})
        return next(iter(first.values()), {}).get("rank1", 0.0)
