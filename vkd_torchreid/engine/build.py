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
from vkd_torchreid.models import build_model, build_student, load_weights, reference_arch

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


def build_teacher(cfg: CfgNode, num_classes: int, path: str = "", arch: str = "",
                  trust: bool = False) -> nn.Module:
    """The frozen teacher of the VKD stage, loaded from ``vkd.teacher_checkpoint`` (or ``path``).

    The checkpoint may be ours, torchreid's, or a released reference experiment folder. Its
    backbone is ``arch``, else ``vkd.teacher_arch``, else ``model.name``, or the one a
    reference folder declares.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: its backbone or number of classes does not match.
    """
    path = path or cfg.vkd.teacher_checkpoint
    if not os.path.exists(path):
        raise FileNotFoundError(f"teacher checkpoint not found: {path} (vkd.teacher_checkpoint)")
    arch = arch or cfg.vkd.teacher_arch or cfg.model.name
    if os.path.isdir(path):
        ref_arch, ref_classes = reference_arch(path)
        if cfg.vkd.teacher_arch and ref_arch != cfg.vkd.teacher_arch:
            raise ValueError(f"teacher {path} is a {ref_arch} but vkd.teacher_arch is "
                             f"{cfg.vkd.teacher_arch}")
        if ref_classes != num_classes:
            raise ValueError(f"teacher {path} has {ref_classes} classes but the training set "
                             f"has {num_classes} identities")
        arch = ref_arch
    teacher = build_model(arch, num_classes, pretrained=False, **_model_kwargs(cfg))
    try:
        load_weights(teacher, path, trust=trust)
    except ValueError as exc:
        raise ValueError(f"teacher checkpoint {path} does not fit a {arch} with {num_classes} "
                         f"classes (vkd.teacher_arch / model.name, training identities): "
                         f"{exc}") from exc
    return teacher


def new_student(cfg: CfgNode, teacher: nn.Module) -> nn.Module:
    """The student of one generation: a re-initialised copy of the teacher, or ``model.name``
    built fresh when it names another backbone (cross-distillation)."""
    arch = "" if cfg.model.name == getattr(teacher, "arch", "") else cfg.model.name
    return build_student(teacher, arch=arch, reinit_last_block=cfg.vkd.reinit_layer4,
                         pretrained=cfg.model.pretrained,
                         pretrained_path=cfg.model.pretrained_path)


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
    student = new_student(cfg, teacher)
    lr = cfg.train.lr * cfg.vkd.generation_lr_decay ** generation
    optimizer, scheduler = build_optim(cfg, student, lr=lr)
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


def train(cfg: CfgNode, resume: str = "", trust: bool = False,
          datamanager: Optional[VKDDataManager] = None) -> RunResult:
    """Trains the stage of the config (all generations for the student) and evaluates it.

    Args:
        resume: checkpoint to resume from (a generation's checkpoint for the student stage).
        trust: allow legacy pickled checkpoints.
    """
    dm = datamanager or build_datamanager(cfg)
    save_dir = cfg.data.save_dir
    if cfg.vkd.stage == "teacher":
        engine = build_engine(cfg, dm, trust=trust)
        start = engine.resume(resume, trust=trust) if resume else 0
        engine.run(**run_kwargs(cfg, save_dir, start))
        return RunResult(engine, engine.results)

    generations = cfg.vkd.generations
    first_gen, teacher = 0, None
    if resume:
        state = ckpt_io.load_checkpoint(resume, trust=trust)
        first_gen = int(state.get("meta", {}).get("generation", 0))
        if first_gen > 0:  # the previous generation's final student is this one's teacher
            prev = os.path.join(generation_dir(save_dir, first_gen - 1, generations),
                                "model", ckpt_io.LATEST_NAME)
            teacher = build_teacher(cfg, dm.num_train_pids, path=prev, arch=cfg.model.name,
                                    trust=trust)
    engine: Optional[VKDEngineBase] = None
    for g in range(first_gen, generations):
        engine = build_engine(cfg, dm, teacher=teacher, generation=g, trust=trust)
        start = engine.resume(resume, trust=trust) if (resume and g == first_gen) else 0
        engine.run(**run_kwargs(cfg, generation_dir(save_dir, g, generations), start))
        teacher = copy.deepcopy(engine.model)
    assert engine is not None
    return RunResult(engine, engine.results)


def evaluate(cfg: CfgNode, trust: bool = False,
             datamanager: Optional[VKDDataManager] = None) -> Dict[str, Any]:
    """Evaluates ``model.load_weights`` (ours, torchreid's, or a released reference
    experiment folder) with the protocols of ``data.targets``; writes ``results.json``."""
    path = cfg.model.load_weights
    if not path:
        raise ValueError("evaluation needs the weights to evaluate: set model.load_weights "
                         "(a checkpoint or a released reference experiment folder)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights not found: {path} (model.load_weights)")
    dm = datamanager or build_datamanager(cfg)
    arch, num_classes = cfg.model.name, dm.num_train_pids
    if os.path.isdir(path):
        arch, num_classes = reference_arch(path)
    model = build_model(arch, num_classes, pretrained=False, **_model_kwargs(cfg))
    load_weights(model, path, trust=trust)
    engine = TeacherEngine(dm, model, None, None, engine_options(cfg))
    engine.stage = cfg.vkd.stage
    engine.run(**run_kwargs(cfg, cfg.data.save_dir), test_only=True)
    return engine.results
