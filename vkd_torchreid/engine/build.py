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
from vkd_torchreid.engine.targets import teacher_targets
from vkd_torchreid.engine.teacher import TeacherEngine
from vkd_torchreid.engine.vkd import DistillOptions, VKDEngine
from vkd_torchreid.models import build_model, build_student, open_network, read_checkpoint
from vkd_torchreid.models.weights import NetworkCheckpoint
from vkd_torchreid.utils import checkpoint as ckpt_io
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.device import configure_cuda, place

logger = logging.getLogger(__name__)


def _model_kwargs(cfg: CfgNode) -> Dict[str, Any]:
    return {"loss": "triplet", "use_gpu": cfg.use_gpu, "last_stride": cfg.model.last_stride,
            "pretrained_path": cfg.model.pretrained_path}


def load_network(cfg: CfgNode, path: str, key: str, num_classes: int,
                 arch: str = "") -> nn.Module:
    """A trained network from a checkpoint: ours, torchreid's, or a released reference
    experiment folder (see :func:`vkd_torchreid.models.open_network`).

    Args:
        path: the checkpoint; ``key`` names the config key it came from, for messages.
        num_classes: identities of the training set; the checkpoint must have as many.
        arch: the architecture the config expects; empty: the one the checkpoint declares
            (our checkpoints and reference folders do), else ``model.name``.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        CheckpointMismatchError: one line naming the file and both values when its
            architecture or number of classes differs from what the run needs.
    """
    return open_network(path, arch, num_classes, default_arch=cfg.model.name,
                        last_stride=cfg.model.last_stride, trust=cfg.model.trust_checkpoint,
                        key=key)


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
    if cfg.vkd.stage == "teacher":
        if cfg.model.load_weights:
            model = load_network(cfg, cfg.model.load_weights, "model.load_weights",
                                 num_classes, cfg.model.name)
        else:
            model = build_model(cfg.model.name, num_classes, pretrained=cfg.model.pretrained,
                                **_model_kwargs(cfg))
        optimizer, scheduler = build_optim(cfg, model)
        return TeacherEngine(dm, model, optimizer, scheduler, options, evaluator,
                             callbacks=callbacks)
    teacher = teacher if teacher is not None else build_teacher(cfg, num_classes)
    student = new_student(cfg, teacher, generation)
    optimizer, scheduler = build_optim(cfg, student, lr=generation_lr(cfg, generation))
    distill = DistillOptions.from_config(cfg)
    engine = VKDEngine(dm, student, teacher, optimizer, scheduler, options, distill, evaluator,
                       generation, callbacks,
                       targets=teacher_targets(cfg, distill.targets, dm.train_tracklets))
    if engine.uses_teacher:  # a cache to build needs a writable folder: checked before writing
        engine.targets.check(engine.teacher)
    return engine


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
                     callbacks: Optional[Sequence[Callback]] = None,
                     resume_key: str = "--resume") -> TrainingJob:
    """Builds the data, the models and the engine of a run without writing anything.

    Args:
        resume: checkpoint to resume from (a generation's checkpoint for the student stage).
        resume_key: where ``resume`` came from (``--resume`` or ``model.resume``), for messages.
        callbacks: the engine's callbacks (default: ``default_callbacks`` of the config).
    """
    dm = datamanager or VKDDataManager.from_config(cfg)
    trust = cfg.model.trust_checkpoint
    first_gen, teacher = 0, None
    if resume and cfg.vkd.stage == "student":
        state = ckpt_io.load_training_checkpoint(resume, trust=trust, key=resume_key)
        first_gen = int(state.get("meta", {}).get("generation", 0))
        if first_gen > 0:  # the previous generation's final student is this one's teacher
            prev = os.path.join(generation_dir(cfg.data.save_dir, first_gen - 1,
                                               cfg.vkd.generations),
                                "model", ckpt_io.LATEST_NAME)
            teacher = build_teacher(cfg, dm.num_train_pids, path=prev, arch=cfg.model.name)
    engine = build_engine(cfg, dm, teacher=teacher, generation=first_gen, callbacks=callbacks)
    start = engine.resume(resume, trust=trust, key=resume_key) if resume else 0
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
    configure_device(cfg)
    ckpt = read_checkpoint(path, cfg.model.trust_checkpoint, "model.load_weights")
    dm = datamanager or VKDDataManager.from_config(cfg)
    model = open_network(path, default_arch=cfg.model.name,
                         default_classes=dm.num_train_pids, last_stride=cfg.model.last_stride,
                         trust=cfg.model.trust_checkpoint, key="model.load_weights",
                         checkpoint=ckpt)
    evaluator = Evaluator.from_config(cfg, dm)
    model = place(model, evaluator.device, cfg.train.channels_last)
    return EvaluationJob(cfg, model, evaluator, ckpt)


def evaluate(cfg: CfgNode, datamanager: Optional[VKDDataManager] = None) -> Dict[str, Any]:
    """Evaluates ``model.load_weights`` with the protocols of ``data.targets``; writes
    ``results.json``; returns its content."""
    return prepare_evaluation(cfg, datamanager).run()
