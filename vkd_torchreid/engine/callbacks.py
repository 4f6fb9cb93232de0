"""End-of-epoch callbacks of the engines' training loop.

The loop (:meth:`vkd_torchreid.engine.base.VKDEngineBase.run`) calls, in list order,
``on_train_start`` once, ``on_epoch_start`` and ``on_epoch_end`` around every epoch, and
``on_train_end`` before the final test. A callback asks the loop to stop after the current
epoch with :meth:`~vkd_torchreid.engine.base.VKDEngineBase.request_stop`.

The engines get :func:`default_callbacks` (losses.jsonl, skipped-frame report, latest
checkpoint, periodic test); the demo and the study add :class:`Validation` and
:class:`EarlyStopping`.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

LOSSES_FILE = "losses.jsonl"


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, engine: Any) -> None:
        """Before the first epoch of this run (after a resume: the first remaining one)."""

    def on_epoch_start(self, engine: Any) -> None:
        """Before each epoch; ``engine.epoch`` is its 0-based index."""

    def on_epoch_end(self, engine: Any) -> None:
        """After each epoch; ``engine.completed_epochs`` counts it."""

    def on_train_end(self, engine: Any) -> None:
        """After the last epoch (or a requested stop), before the final test."""


class EpochLosses(Callback):
    """Appends the epoch's mean losses to ``<save_dir>/losses.jsonl`` (one line per epoch)."""

    def on_epoch_end(self, engine: Any) -> None:
        row = engine.epoch_summary()  # under torchrun: means over ranks, rank 0 writes
        if engine.dist.is_main:
            os.makedirs(engine.save_dir, exist_ok=True)
            with open(os.path.join(engine.save_dir, LOSSES_FILE), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        logger.info("epoch %d: %s  (%.1f s, %.1f s of it waiting for data)", row["epoch"],
                    "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("loss")),
                    row["epoch_s"], row["data_wait_s"])


class SkippedFrames(Callback):
    """Reports the unreadable frames the loader replaced during the epoch."""

    def on_epoch_end(self, engine: Any) -> None:
        if engine.skipped_frames:
            logger.warning("epoch %d: %d unreadable frame(s) were replaced by other frames of "
                           "their tracklets: %s", engine.completed_epochs,
                           len(engine.skipped_frames),
                           ", ".join(sorted(set(engine.skipped_frames))[:10]))


class LatestCheckpoint(Callback):
    """Writes ``<save_dir>/model/latest.pth.tar`` after every epoch (atomically)."""

    def on_epoch_end(self, engine: Any) -> None:
        engine.save_latest()


class PeriodicTest(Callback):
    """torchreid's periodic evaluation: a test and a numbered checkpoint every ``eval_freq``
    epochs from ``start_eval`` on (not after the last epoch: the final test follows)."""

    def __init__(self, eval_freq: int, start_eval: int = 0) -> None:
        self.eval_freq = eval_freq
        self.start_eval = start_eval

    def on_epoch_end(self, engine: Any) -> None:
        done = engine.completed_epochs
        if (self.eval_freq > 0 and done >= self.start_eval and done % self.eval_freq == 0
                and done != engine.max_epoch):
            rank1 = engine.test()
            engine.save_model(done - 1, rank1, engine.save_dir)


class Validation(Callback):
    """Evaluates the model on a validation set every ``every`` epochs.

    Args:
        evaluator: an Evaluator over the validation data (its first target is read).
        every: epochs between validations.
        protocol, metric: the value tracked (default: V2V mAP).

    Attributes:
        curve: ``[(epoch, value)]`` of every validation so far.
    """

    def __init__(self, evaluator: Any, every: int, protocol: str = "V2V",
                 metric: str = "mAP") -> None:
        self.evaluator = evaluator
        self.every = every
        self.protocol = protocol
        self.metric = metric
        self.curve: List[Tuple[int, float]] = []

    def latest(self, epoch: int) -> Optional[float]:
        """The value measured after ``epoch`` completed epochs, None if not validated then."""
        return self.curve[-1][1] if self.curve and self.curve[-1][0] == epoch else None

    def on_epoch_end(self, engine: Any) -> None:
        done = engine.completed_epochs
        if done % self.every:
            return
        results = self.evaluator.evaluate(engine.model)
        value = results[self.evaluator.datamanager.targets[0]][self.protocol][self.metric]
        self.curve.append((done, value))
        logger.info("%s epoch %d: validation %s %s %.1f%%", engine.stage, done,
                    self.protocol, self.metric, 100 * value)


class EarlyStopping(Callback):
    """Stops when the validation value stops rising, and keeps the best state.

    The value "stops rising" when ``patience`` validations in a row fail to beat the last
    significant best by more than ``min_delta``; only validations after ``min_epochs`` (the
    last learning-rate drop) count, so the schedule always runs to its end. At the end of
    training the model gets the best state seen, and ``engine.completed_epochs`` its epoch.

    Attributes:
        info: ``{"epoch", "val_mAP", "plateau_reached"}`` of the selected state.
    """

    def __init__(self, validation: Validation, patience: int, min_delta: float = 0.0,
                 min_epochs: int = 0) -> None:
        self.validation = validation
        self.patience = patience
        self.min_delta = min_delta
        self.min_epochs = min_epochs
        self.best = -1.0
        self.reference = -1.0  # the last best that counted as a significant rise
        self.waited = 0
        self.best_state: Optional[Tuple[int, Dict[str, Any]]] = None
        self.info: Dict[str, Any] = {}

    def on_epoch_end(self, engine: Any) -> None:
        done = engine.completed_epochs
        value = self.validation.latest(done)
        if value is None:
            return
        if value > self.best:
            self.best = value
            self.best_state = (done, copy.deepcopy(engine.model.state_dict()))
        if value > self.reference + self.min_delta:
            self.reference, self.waited = value, 0
        elif done > self.min_epochs:
            self.waited += 1
            if self.patience and self.waited >= self.patience:
                logger.info("validation %s stopped rising: best %.1f%% at epoch %d",
                            self.validation.metric, 100 * self.best, self.best_state[0])
                self.info["plateau_reached"] = True
                engine.request_stop("validation plateau")

    def on_train_end(self, engine: Any) -> None:
        plateau = self.info.get("plateau_reached", False)
        if self.patience and not plateau:
            logger.warning("%s: validation %s was still rising after %d epochs (best %.1f%%); "
                           "train longer for a fair comparison", engine.stage,
                           self.validation.metric, engine.completed_epochs, 100 * self.best)
        if self.best_state is not None:
            epoch, state = self.best_state
            engine.model.load_state_dict(state)
            engine.completed_epochs = epoch
        self.info = {"epoch": engine.completed_epochs, "val_mAP": self.best,
                     "plateau_reached": plateau}


def default_callbacks(eval_freq: int = -1, start_eval: int = 0) -> List[Callback]:
    """What every training run does after each epoch, in this order."""
    return [EpochLosses(), SkippedFrames(), LatestCheckpoint(), PeriodicTest(eval_freq,
                                                                             start_eval)]
