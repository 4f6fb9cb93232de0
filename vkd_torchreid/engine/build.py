"""From a config to models and engines; a training run (with its generations) and an
evaluation, each checked and built before anything is written."""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from yacs.config import CfgNode

from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine.base import EngineOptions, VKDEngineBase
from vkd_torchreid.engine.callbacks import Callback, default_callbacks
from vkd_torchreid.engine.evaluator import Evaluator
from vkd_torchreid.engine.optim import build_optim, generation_lr
from vkd_torchreid.engine.teacher import TeacherEngine
from vkd_torchreid.engine.teacher_cache import (
    RESIZE_VERSION,
    CacheError,
    CacheKey,
    frames_hash,
    open_or_build,
    state_hash,
)
from vkd_torchreid.engine.vkd import DistillOptions, VKDEngine
from vkd_torchreid.models import build_model, build_student, load_weights
from vkd_torchreid.models.weights import NetworkCheckpoint, load_network_state, read_network
from vkd_torchreid.utils import checkpoint as ckpt_io
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.device import configure_cuda
from vkd_torchreid.utils.progress import progress_enabled

logger = logging.getLogger(__name__)

TEACHER_CACHE_DIR = "teacher_cache"


def _model_kwargs(cfg: CfgNode) -> Dict[str, Any]:
    return {"loss": "triplet", "use_gpu": cfg.use_gpu, "last_stride": cfg.model.last_stride,
            "pretrained_path": cfg.model.pretrained_path}


def load_network(cfg: CfgNode, path: str, key: str, num_classes: int,
                 arch: str = "") -> nn.Module:
    """A trained network from a checkpoint: ours, torchreid's, or a released reference
    experiment folder.

    Args:
        path: the checkpoint; ``key`` names the config key it came from, for messages.
        num_classes: identities of the training set; the checkpoint must have as many.
        arch: the architecture the config expects; empty: the one the checkpoint declares
            (our checkpoints and reference folders do), else ``model.name``.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: one line naming the file and both values when its architecture or number
            of classes differs from what the run needs.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{key}: checkpoint not found: {path}")
    ckpt = read_network(path, trust=cfg.model.trust_checkpoint)
    if arch and ckpt.arch and ckpt.arch != arch:
        raise ValueError(f"{key} {path} holds a {ckpt.arch} network but the run needs a {arch}")
    if ckpt.num_classes is not None and ckpt.num_classes != num_classes:
        raise ValueError(f"{key} {path} has {ckpt.num_classes} classes but the training set "
                         f"has {num_classes} identities")
    arch = arch or ckpt.arch or cfg.model.name
    model = build_model(arch, num_classes, pretrained=False, **_model_kwargs(cfg))
    try:
        load_network_state(model, ckpt)
    except ValueError as exc:
        raise ValueError(f"{key} {path} does not fit a {arch} with {num_classes} classes: "
                         f"{exc}") from exc
    return model


def build_teacher(cfg: CfgNode, num_classes: int, path: str = "", arch: str = "") -> nn.Module:
    """The frozen teacher of the VKD stage, loaded from ``vkd.teacher_checkpoint`` (or ``path``).

    Its backbone is ``arch``, else ``vkd.teacher_arch``, else the one the checkpoint declares,
    else ``model.name`` (see :func:`load_network`).
    """
    return load_network(cfg, path or cfg.vkd.teacher_checkpoint, "vkd.teacher_checkpoint",
                        num_classes, arch or cfg.vkd.teacher_arch)


def new_student(cfg: CfgNode, teacher: nn.Module, generation: int = 0) -> nn.Module:
    """The student of one generation, re-initialised as the reference does (layer4 and the
    classifier; see :func:`vkd_torchreid.models.build_student`), starting from:

    - ``vkd.student_checkpoint`` (first generation only): the student's own stage-1 model,
      as the reference's ``--student`` for cross-distillation;
    - else a copy of the teacher when ``model.name`` is the teacher's backbone;
    - else a fresh ``model.name`` from ImageNet, which is not the paper's setting (warned).
    """
    num_classes = teacher.num_classes
    if generation == 0 and cfg.vkd.student_checkpoint:
        base = load_network(cfg, cfg.vkd.student_checkpoint, "vkd.student_checkpoint",
                            num_classes, cfg.model.name)
        arch = ""
    else:
        base = teacher
        arch = "" if cfg.model.name == teacher.arch else cfg.model.name
        if arch:
            logger.warning(
                "cross-distillation without vkd.student_checkpoint: the %s student starts from "
                "%s, not from its own stage-1 model as in the paper; set "
                "vkd.student_checkpoint to its teacher-stage run for the paper's setting",
                arch, "ImageNet weights" if cfg.model.pretrained else "a random init")
    return build_student(base, arch=arch, reinit_last_block=cfg.vkd.reinit_layer4,
                         pretrained=cfg.model.pretrained,
                         pretrained_path=cfg.model.pretrained_path)


def configure_device(cfg: CfgNode) -> None:
    """With CUDA in use: the backend flags ``train.cudnn_benchmark`` and ``train.tf32``
    (:func:`~vkd_torchreid.utils.device.configure_cuda`); without it nothing changes."""
    if cfg.use_gpu and torch.cuda.is_available():
        configure_cuda(cfg.train.cudnn_benchmark, cfg.train.tf32)


def build_engine(cfg: CfgNode, datamanager: Optional[VKDDataManager] = None,
                 teacher: Optional[nn.Module] = None, generation: int = 0,
                 callbacks: Optional[Sequence[Callback]] = None) -> VKDEngineBase:
    """The engine of ``vkd.stage`` with its model(s), optimizer, scheduler and Evaluator.

    ``callbacks`` default to :func:`~vkd_torchreid.engine.callbacks.default_callbacks` of
    ``test.eval_freq`` / ``test.start_eval``.
    """
    configure_device(cfg)
    dm = datamanager or VKDDataManager.from_config(cfg)
    num_classes = dm.num_train_pids
    options = EngineOptions.from_config(cfg)
    evaluator = Evaluator.from_config(cfg, dm)
    if callbacks is None:
        callbacks = default_callbacks(cfg.test.eval_freq, cfg.test.start_eval)
    if (cfg.vkd.stage == "student" and cfg.vkd.teacher_cache
            and not any(isinstance(c, TeacherCacheSetup) for c in callbacks)):
        callbacks = [TeacherCacheSetup(cfg), *callbacks]
    if cfg.vkd.stage == "teacher":
        model = build_model(cfg.model.name, num_classes, pretrained=cfg.model.pretrained,
                            **_model_kwargs(cfg))
        if cfg.model.load_weights:
            load_weights(model, cfg.model.load_weights, trust=cfg.model.trust_checkpoint)
        optimizer, scheduler = build_optim(cfg, model)
        return TeacherEngine(dm, model, optimizer, scheduler, options, evaluator,
                             callbacks=callbacks)
    teacher = teacher if teacher is not None else build_teacher(cfg, num_classes)
    student = new_student(cfg, teacher, generation)
    optimizer, scheduler = build_optim(cfg, student, lr=generation_lr(cfg, generation))
    return VKDEngine(dm, student, teacher, optimizer, scheduler, options,
                     DistillOptions.from_config(cfg), evaluator, generation, callbacks)


class TeacherCacheSetup(Callback):
    """Opens (or builds) the teacher-feature cache before the first epoch of a student run and
    switches the loader to the student's frames (``vkd.teacher_cache``)."""

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg

    def on_train_start(self, engine: Any) -> None:
        if engine.teacher_cache is not None or not engine.uses_teacher:
            return
        cfg, dm, teacher = self.cfg, engine.datamanager, engine.teacher
        key = CacheKey(
            teacher=state_hash(teacher), arch=teacher.arch, last_stride=teacher.last_stride,
            feature_dim=teacher.feature_dim, datasets=tuple(cfg.data.sources),
            frames=frames_hash(dm.train_tracklets), height=cfg.data.height,
            width=cfg.data.width, norm_mean=tuple(cfg.data.norm_mean),
            norm_std=tuple(cfg.data.norm_std), resize=RESIZE_VERSION,
            flip=cfg.vkd.teacher_cache_flip, precision=cfg.train.amp)
        root = cfg.vkd.teacher_cache_dir or os.path.join(cfg.data.save_dir, TEACHER_CACHE_DIR)

        def open_cache(build: bool) -> Any:
            return open_or_build(teacher, dm.train_tracklets, key, root, dm.augment,
                                 engine.device, cfg.train.amp, cfg.train.channels_last,
                                 cfg.data.workers, cfg.test.batch_size,
                                 progress_enabled(cfg.test.progress), build=build)

        # Under torchrun rank 0 builds (or checks) the cache while the others wait, then they
        # open what it wrote (never build: several ranks would write one folder).
        error, cache = None, None
        if engine.dist.is_main:
            try:
                cache = open_cache(True)
            except CacheError as exc:
                error = str(exc)
        distributed.long_barrier()
        distributed.agree(error)
        if cache is None:
            try:
                cache = open_cache(False)
            except CacheError as exc:
                error = str(exc)
        distributed.agree(error)  # every rank: one that cannot read the cache stops them all
        if cfg.vkd.teacher_cache_device:
            cache.to_device(engine.device)
        dm.use_teacher_rows(cache.offsets, cache.flip)
        engine.teacher_cache = cache


def generation_dir(save_dir: str, generation: int, generations: int) -> str:
    """Save dir of one generation: the save dir itself when there is only one."""
    return save_dir if generations == 1 else os.path.join(save_dir, f"gen{generation + 1}")


@dataclasses.dataclass
class RunResult:
    """What a training run leaves: the final engine and its results."""

    engine: VKDEngineBase
    results: Dict[str, Any]


@dataclasses.dataclass
class TrainingJob:
    """A training run whose data and models are built and checked, and nothing written yet.

    :func:`prepare_training` builds it (every bad dataset, checkpoint, architecture or class
    count raises there); :meth:`run` trains, writing into ``data.save_dir``.
    """

    cfg: CfgNode
    engine: VKDEngineBase  # the engine of the first (or resumed) generation
    first_generation: int
    start_epoch: int

    def run(self) -> RunResult:
        cfg, engine = self.cfg, self.engine
        save_dir, generations = cfg.data.save_dir, cfg.vkd.generations
        g, start = self.first_generation, self.start_epoch
        while True:
            engine.run(generation_dir(save_dir, g, generations) if cfg.vkd.stage == "student"
                       else save_dir, cfg.train.max_epoch, start, cfg.train.print_freq)
            g, start = g + 1, 0
            if cfg.vkd.stage == "teacher" or g >= generations:
                return RunResult(engine, engine.results)
            # the final student of a generation is the next one's teacher
            engine = build_engine(cfg, engine.datamanager, teacher=copy.deepcopy(engine.model),
                                  generation=g, callbacks=engine.callbacks)


def prepare_training(cfg: CfgNode, resume: str = "",
                     datamanager: Optional[VKDDataManager] = None,
                     callbacks: Optional[Sequence[Callback]] = None) -> TrainingJob:
    """Builds the data, the models and the engine of a run without writing anything.

    Args:
        resume: checkpoint to resume from (a generation's checkpoint for the student stage).
        callbacks: the engine's callbacks (default: ``default_callbacks`` of the config).
    """
    dm = datamanager or VKDDataManager.from_config(cfg)
    trust = cfg.model.trust_checkpoint
    first_gen, teacher = 0, None
    if resume and cfg.vkd.stage == "student":
        state = ckpt_io.load_checkpoint(resume, trust=trust)
        first_gen = int(state.get("meta", {}).get("generation", 0))
        if first_gen > 0:  # the previous generation's final student is this one's teacher
            prev = os.path.join(generation_dir(cfg.data.save_dir, first_gen - 1,
                                               cfg.vkd.generations),
                                "model", ckpt_io.LATEST_NAME)
            teacher = build_teacher(cfg, dm.num_train_pids, path=prev, arch=cfg.model.name)
    engine = build_engine(cfg, dm, teacher=teacher, generation=first_gen, callbacks=callbacks)
    start = engine.resume(resume, trust=trust) if resume else 0
    return TrainingJob(cfg, engine, first_gen, start)


def train(cfg: CfgNode, resume: str = "",
          datamanager: Optional[VKDDataManager] = None) -> RunResult:
    """Trains the stage of the config (all generations for the student) and evaluates it."""
    return prepare_training(cfg, resume, datamanager).run()


@dataclasses.dataclass
class EvaluationJob:
    """An evaluation of ``model.load_weights`` whose data and weights are checked and loaded,
    nothing written yet (:func:`prepare_evaluation`)."""

    cfg: CfgNode
    model: nn.Module
    evaluator: Evaluator
    checkpoint: NetworkCheckpoint

    def run(self) -> Dict[str, Any]:
        """Evaluates; writes ``<data.save_dir>/results.json``; returns what it wrote."""
        save_dir = self.cfg.data.save_dir
        per_dataset = self.evaluator.evaluate(self.model, save_dir)
        return self.evaluator.write_results(per_dataset, save_dir, self.cfg.vkd.stage,
                                            self.checkpoint.generation, self.checkpoint.epoch,
                                            distributed.context().world_size)


def prepare_evaluation(cfg: CfgNode,
                       datamanager: Optional[VKDDataManager] = None) -> EvaluationJob:
    """Loads ``model.load_weights`` (ours, torchreid's, or a released reference experiment
    folder) for evaluation; its architecture and class count are the checkpoint's where it
    declares them (test identities are not training classes), else the config's."""
    path = cfg.model.load_weights
    if not path:
        raise ValueError("evaluation needs the weights to evaluate: set model.load_weights "
                         "(a checkpoint or a released reference experiment folder)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights not found: {path} (model.load_weights)")
    configure_device(cfg)
    dm = datamanager or VKDDataManager.from_config(cfg)
    ckpt = read_network(path, trust=cfg.model.trust_checkpoint)
    model = build_model(ckpt.arch or cfg.model.name, ckpt.num_classes or dm.num_train_pids,
                        pretrained=False, **_model_kwargs(cfg))
    load_network_state(model, ckpt)
    evaluator = Evaluator.from_config(cfg, dm)
    model = model.to(evaluator.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return EvaluationJob(cfg, model, evaluator, ckpt)


def evaluate(cfg: CfgNode, datamanager: Optional[VKDDataManager] = None) -> Dict[str, Any]:
    """Evaluates ``model.load_weights`` with the protocols of ``data.targets``; writes
    ``results.json``; returns its content."""
    return prepare_evaluation(cfg, datamanager).run()
