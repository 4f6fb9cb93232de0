"""From a config to models, optimisers and engines; the generation loop of the VKD stage."""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from yacs.config import CfgNode

from vkd_torchreid.compat import build_lr_scheduler, build_optimizer
from vkd_torchreid.config import lr_scheduler_kwargs, optimizer_kwargs
from vkd_torchreid.data.manager import VKDDataManager, build_datamanager
from vkd_torchreid.engine import checkpoint as ckpt_io
from vkd_torchreid.engine.base import EngineOptions, VKDEngineBase
from vkd_torchreid.engine.teacher import TeacherEngine
from vkd_torchreid.engine.vkd import DistillOptions, VKDEngine
from vkd_torchreid.models import build_model, build_student, load_weights
from vkd_torchreid.models.weights import load_network_state, read_network

logger = logging.getLogger(__name__)


def engine_options(cfg: CfgNode, generation: int = 0) -> EngineOptions:
    """:class:`EngineOptions` from a config."""
    margin: Any = "soft" if cfg.loss.triplet.soft_margin else float(cfg.loss.triplet.margin)
    return EngineOptions(
        use_gpu=bool(cfg.use_gpu) and torch.cuda.is_available(),
        amp=cfg.train.amp, channels_last=cfg.train.channels_last, test_amp=cfg.test.amp,
        test_chunk=cfg.video.test_chunk, dist_metric=cfg.test.dist_metric,
        ranks=tuple(cfg.test.ranks),
        label_smooth=cfg.loss.softmax.epsilon if cfg.loss.softmax.label_smooth else 0.0,
        triplet_margin=margin, weight_x=cfg.loss.triplet.weight_x,
        weight_t=cfg.loss.triplet.weight_t, generation=generation,
    )


def distill_options(cfg: CfgNode) -> DistillOptions:
    """:class:`DistillOptions` from the ``vkd`` section."""
    v = cfg.vkd
    return DistillOptions(student_frames=v.student_frames, tau=v.tau, alpha=v.alpha, beta=v.beta,
                          logits_loss=v.logits_loss, teacher_bn=v.teacher_bn)


def build_optim(cfg: CfgNode, model: nn.Module, lr: Optional[float] = None) -> Tuple[Any, Any]:
    """torchreid's optimizer and LR scheduler for ``model`` (``lr`` overrides train.lr)."""
    kwargs = optimizer_kwargs(cfg)
    if lr is not None:
        kwargs["lr"] = lr
    optimizer = build_optimizer(model, **kwargs)
    return optimizer, build_lr_scheduler(optimizer, **lr_scheduler_kwargs(cfg))


def _model_kwargs(cfg: CfgNode) -> Dict[str, Any]:
    return {"loss": "triplet", "use_gpu": cfg.use_gpu, "last_stride": cfg.model.last_stride,
            "pretrained_path": cfg.model.pretrained_path}


def load_network(cfg: CfgNode, path: str, key: str, num_classes: int, arch: str = "",
                 trust: bool = False) -> nn.Module:
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
    ckpt = read_network(path, trust=trust)
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


def build_teacher(cfg: CfgNode, num_classes: int, path: str = "", arch: str = "",
                  trust: bool = False) -> nn.Module:
    """The frozen teacher of the VKD stage, loaded from ``vkd.teacher_checkpoint`` (or ``path``).

    Its backbone is ``arch``, else ``vkd.teacher_arch``, else the one the checkpoint declares,
    else ``model.name`` (see :func:`load_network`).
    """
    return load_network(cfg, path or cfg.vkd.teacher_checkpoint, "vkd.teacher_checkpoint",
                        num_classes, arch or cfg.vkd.teacher_arch, trust)


def new_student(cfg: CfgNode, teacher: nn.Module, generation: int = 0,
                trust: bool = False) -> nn.Module:
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
                            num_classes, cfg.model.name, trust)
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


def generation_lr(cfg: CfgNode, generation: int) -> float:
    """The learning rate of a generation: ``max(lr * decay^g, floor)``, as the reference."""
    if generation == 0:
        return cfg.train.lr
    return max(cfg.train.lr * cfg.vkd.generation_lr_decay ** generation,
               cfg.vkd.generation_lr_floor)


def build_engine(cfg: CfgNode, datamanager: Optional[VKDDataManager] = None,
                 teacher: Optional[nn.Module] = None, generation: int = 0,
                 trust: bool = False) -> VKDEngineBase:
    """The engine of ``vkd.stage`` with its model(s), optimizer and scheduler."""
    dm = datamanager or build_datamanager(cfg)
    num_classes = dm.num_train_pids
    if cfg.vkd.stage == "teacher":
        model = build_model(cfg.model.name, num_classes, pretrained=cfg.model.pretrained,
                            **_model_kwargs(cfg))
        if cfg.model.load_weights:
            load_weights(model, cfg.model.load_weights, trust=trust)
        optimizer, scheduler = build_optim(cfg, model)
        return TeacherEngine(dm, model, optimizer, scheduler, engine_options(cfg))
    teacher = teacher if teacher is not None else build_teacher(cfg, num_classes, trust=trust)
    student = new_student(cfg, teacher, generation, trust)
    optimizer, scheduler = build_optim(cfg, student, lr=generation_lr(cfg, generation))
    return VKDEngine(dm, student, teacher, optimizer, scheduler,
                     engine_options(cfg, generation), distill_options(cfg))


def generation_dir(save_dir: str, generation: int, generations: int) -> str:
    """Save dir of one generation: the save dir itself when there is only one."""
    return save_dir if generations == 1 else os.path.join(save_dir, f"gen{generation + 1}")


def run_kwargs(cfg: CfgNode, save_dir: str, start_epoch: int = 0) -> Dict[str, Any]:
    """Arguments of torchreid's ``Engine.run`` from a config."""
    return {
        "save_dir": save_dir, "max_epoch": cfg.train.max_epoch, "start_epoch": start_epoch,
        "print_freq": cfg.train.print_freq, "start_eval": cfg.test.start_eval,
        "eval_freq": cfg.test.eval_freq, "dist_metric": cfg.test.dist_metric,
        "normalize_feature": cfg.test.normalize_feature, "ranks": list(cfg.test.ranks),
        "rerank": cfg.test.rerank,
    }


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
    trust: bool = False

    def run(self) -> RunResult:
        cfg, engine = self.cfg, self.engine
        save_dir, generations = cfg.data.save_dir, cfg.vkd.generations
        if cfg.vkd.stage == "teacher":
            engine.run(**run_kwargs(cfg, save_dir, self.start_epoch))
            return RunResult(engine, engine.results)
        g, start = self.first_generation, self.start_epoch
        while True:
            engine.run(**run_kwargs(cfg, generation_dir(save_dir, g, generations), start))
            g, start = g + 1, 0
            if g >= generations:
                return RunResult(engine, engine.results)
            # the final student of a generation is the next one's teacher
            engine = build_engine(cfg, engine.datamanager, teacher=copy.deepcopy(engine.model),
                                  generation=g, trust=self.trust)


def prepare_training(cfg: CfgNode, resume: str = "", trust: bool = False,
                     datamanager: Optional[VKDDataManager] = None) -> TrainingJob:
    """Builds the data, the models and the engine of a run without writing anything.

    Args:
        resume: checkpoint to resume from (a generation's checkpoint for the student stage).
        trust: allow legacy pickled checkpoints.
    """
    dm = datamanager or build_datamanager(cfg)
    first_gen, teacher = 0, None
    if resume and cfg.vkd.stage == "student":
        state = ckpt_io.load_checkpoint(resume, trust=trust)
        first_gen = int(state.get("meta", {}).get("generation", 0))
        if first_gen > 0:  # the previous generation's final student is this one's teacher
            prev = os.path.join(generation_dir(cfg.data.save_dir, first_gen - 1,
                                               cfg.vkd.generations),
                                "model", ckpt_io.LATEST_NAME)
            teacher = build_teacher(cfg, dm.num_train_pids, path=prev, arch=cfg.model.name,
                                    trust=trust)
    engine = build_engine(cfg, dm, teacher=teacher, generation=first_gen, trust=trust)
    start = engine.resume(resume, trust=trust) if resume else 0
    return TrainingJob(cfg, engine, first_gen, start, trust)


def train(cfg: CfgNode, resume: str = "", trust: bool = False,
          datamanager: Optional[VKDDataManager] = None) -> RunResult:
    """Trains the stage of the config (all generations for the student) and evaluates it."""
    return prepare_training(cfg, resume, trust, datamanager).run()


def prepare_evaluation(cfg: CfgNode, trust: bool = False,
                       datamanager: Optional[VKDDataManager] = None) -> VKDEngineBase:
    """An engine holding ``model.load_weights`` (ours, torchreid's, or a released reference
    experiment folder), checked and loaded, nothing written yet."""
    path = cfg.model.load_weights
    if not path:
        raise ValueError("evaluation needs the weights to evaluate: set model.load_weights "
                         "(a checkpoint or a released reference experiment folder)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights not found: {path} (model.load_weights)")
    dm = datamanager or build_datamanager(cfg)
    ckpt = read_network(path, trust=trust)
    # Test identities are not training classes: the classifier's size is the checkpoint's.
    arch = ckpt.arch or cfg.model.name
    model = build_model(arch, ckpt.num_classes or dm.num_train_pids, pretrained=False,
                        **_model_kwargs(cfg))
    load_network_state(model, ckpt)
    engine = TeacherEngine(dm, model, None, None, engine_options(cfg))
    engine.stage = cfg.vkd.stage
    return engine


def evaluate(cfg: CfgNode, trust: bool = False,
             datamanager: Optional[VKDDataManager] = None) -> Dict[str, Any]:
    """Evaluates ``model.load_weights`` with the protocols of ``data.targets``; writes
    ``results.json``."""
    engine = prepare_evaluation(cfg, trust, datamanager)
    engine.run(**run_kwargs(cfg, cfg.data.save_dir), test_only=True)
    return engine.results
