"""Validation of a config: tables of allowed values and ranges, plus a few named rules that
relate keys to each other. Every error is one line naming the key, the value and what is
allowed. The vocabularies come from the modules that own them."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from yacs.config import CfgNode as CN

from vkd_torchreid.compat import (
    TORCHREID_OPTIMIZERS,
    TORCHREID_SAMPLERS,
    TORCHREID_SCHEDULERS,
    model_names,
    video_dataset_names,
)
from vkd_torchreid.config.defaults import STAGES, TEACHER_CACHE_VERIFY
from vkd_torchreid.data.atrw import ATRW_VIEWS
from vkd_torchreid.data.base import TEST_SAMPLE_METHODS
from vkd_torchreid.data.duke import TRACKLET_MODES as DUKE_TRACKLETS
from vkd_torchreid.data.gpu_decode import DECODE_DEVICES
from vkd_torchreid.data.registry import dataset_class
from vkd_torchreid.data.sampler import MULTIVIEW_SAMPLER, VIEW_STRATEGIES
from vkd_torchreid.data.transforms import ERASE_RATIO_DISTS
from vkd_torchreid.data.veri import IMAGE_GALLERIES as VERI_IMAGE_GALLERIES
from vkd_torchreid.data.veri import QUERY_TRACKS as VERI_QUERY_TRACKS
from vkd_torchreid.evaluation import METRICS
from vkd_torchreid.losses import LOGITS_LOSSES
from vkd_torchreid.models.student import TEACHER_BN_MODES
from vkd_torchreid.utils.device import AMP_MODES
from vkd_torchreid.utils.distributed import DIST_BACKENDS, env_world_size, resolve_backend
from vkd_torchreid.utils.progress import PROGRESS_MODES

#: Key -> the values it may take.
CHOICES: Dict[str, Tuple[Any, ...]] = {
    "vkd.stage": STAGES,
    "vkd.view_strategy": VIEW_STRATEGIES,
    "vkd.teacher_bn": TEACHER_BN_MODES,
    "vkd.teacher_cache_verify": TEACHER_CACHE_VERIFY,
    "vkd.logits_loss": LOGITS_LOSSES,
    "train.amp": AMP_MODES,
    "train.cudnn_benchmark": (True, False),
    "train.tf32": (None, True, False),
    "test.amp": AMP_MODES,
    "train.optim": TORCHREID_OPTIMIZERS,
    "train.lr_scheduler": TORCHREID_SCHEDULERS,
    "sampler.train_sampler": (MULTIVIEW_SAMPLER, *TORCHREID_SAMPLERS),
    "video.sample_method": TEST_SAMPLE_METHODS,
    "video.pooling_method": ("avg",),
    "data.type": ("video",),
    "data.atrw_views": ATRW_VIEWS,
    "data.duke_tracklets": DUKE_TRACKLETS,
    "data.veri_query_track": VERI_QUERY_TRACKS,
    "data.veri_image_gallery": VERI_IMAGE_GALLERIES,
    "data.random_erase_ratio_dist": ERASE_RATIO_DISTS,
    "data.decode_device": DECODE_DEVICES,
    "test.dist_metric": METRICS,
    "test.progress": PROGRESS_MODES,
    "train.dist_backend": DIST_BACKENDS,
    "model.last_stride": (1, 2),
    # VKD always trains CE + batch-hard triplet; loss.triplet.weight_x / weight_t weigh them.
    "loss.name": ("triplet",),
}


@dataclasses.dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (``None``: unbounded); ``open`` excludes ``low``."""

    low: float
    high: Optional[float] = None
    open: bool = False
    integer: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open else value >= self.low
        return above and (self.high is None or value <= self.high)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.high is not None:
            return f"{kind} in {'(' if self.open else '['}{self.low:g}, {self.high:g}]"
        if self.open and self.low == 0:
            return f"a positive {kind.split()[-1]}"
        return f"{kind} >= {self.low:g}"


POSITIVE = Range(0, open=True)
NON_NEGATIVE = Range(0)
COUNT = Range(1, integer=True)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, open=True)

#: Key -> the numbers it may take.
RANGES: Dict[str, Range] = {
    "video.seq_len": COUNT, "video.test_seq_len": Range(0, integer=True),
    "vkd.student_frames": COUNT, "sampler.num_instances": COUNT, "train.batch_size": COUNT,
    "vkd.generations": COUNT, "test.visrank_topk": COUNT,
    "train.max_epoch": Range(0, integer=True), "data.workers": Range(0, integer=True),
    "data.pad": Range(0, integer=True), "data.split_id": Range(0, 9, integer=True),
    "vkd.alpha": NON_NEGATIVE, "vkd.beta": NON_NEGATIVE, "train.weight_decay": NON_NEGATIVE,
    "loss.triplet.weight_t": NON_NEGATIVE, "loss.triplet.weight_x": NON_NEGATIVE,
    "loss.triplet.margin": NON_NEGATIVE, "vkd.generation_lr_floor": NON_NEGATIVE,
    "data.random_erase_prob": PROBABILITY, "data.flip_prob": PROBABILITY,
    "vkd.tau": POSITIVE, "train.lr": POSITIVE, "data.height": COUNT, "data.width": COUNT,
    "test.batch_size": COUNT, "video.test_chunk": COUNT,
    "train.gamma": FRACTION, "vkd.generation_lr_decay": FRACTION,
    "train.dist_timeout_s": POSITIVE,
}


def get_key(cfg: CN, key: str) -> Any:
    """Value of a dotted key (``"loss.triplet.margin"``)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def fail(key: str, value: Any, expected: str) -> ValueError:
    """The one-line error of an invalid value."""
    return ValueError(f"config key {key}={value!r} is invalid: expected {expected}")


def one_of(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise fail(key, value, f"one of {', '.join(repr(a) for a in allowed)}")


def in_range(key: str, value: Any, allowed: Range) -> None:
    if not allowed.holds(value):
        raise fail(key, value, allowed.describe())


# --------------------------------------------------------------------------- named rules

def registered_names(cfg: CN) -> None:
    """Models and datasets must be ours and registered with torchreid."""
    models = [m for m in model_names() if m.startswith("vkd_")]
    one_of("model.name", cfg.model.name, models)
    if cfg.vkd.teacher_arch:
        one_of("vkd.teacher_arch", cfg.vkd.teacher_arch, models)
    datasets = [d for d in video_dataset_names() if d.startswith("vkd_")]
    if not cfg.data.sources:
        raise fail("data.sources", cfg.data.sources, f"at least one of {datasets}")
    for key in ("data.sources", "data.targets"):
        for name in get_key(cfg, key):
            one_of(key, name, datasets)


def student_sees_fewer_frames(cfg: CN) -> None:
    """M < N: the student sees fewer of each item's frames than the teacher."""
    n, m = cfg.video.seq_len, cfg.vkd.student_frames
    if cfg.vkd.stage == "student" and m >= n:
        raise fail("vkd.student_frames", m, f"fewer than video.seq_len={n} (M < N)")


def batch_is_p_times_k(cfg: CN) -> None:
    """K <= P x K, and P x K a multiple of K for our sampler, with P >= 2: the batch-hard
    triplet loss needs a negative (a second identity) for every anchor."""
    k, batch = cfg.sampler.num_instances, cfg.train.batch_size
    if k > batch:
        raise fail("sampler.num_instances", k, f"at most train.batch_size={batch} (K <= P*K)")
    if cfg.sampler.train_sampler != MULTIVIEW_SAMPLER:
        return
    if batch < 2 * k:
        raise fail("train.batch_size", batch,
                   f"at least 2 x sampler.num_instances={2 * k}: P = 2 identities or more "
                   "(the batch-hard triplet loss needs a negative for every anchor)")
    if batch % k:
        raise fail("train.batch_size", batch,
                   f"a multiple of sampler.num_instances={k} (P x K items)")


def augmentation_shapes(cfg: CN) -> None:
    """Normalisation vectors of three channels; erasing scale and ratio as intervals."""
    d = cfg.data
    if len(d.norm_mean) != 3 or len(d.norm_std) != 3:
        raise fail("data.norm_mean/norm_std", (d.norm_mean, d.norm_std), "three values each")
    if any(s <= 0 for s in d.norm_std):
        raise fail("data.norm_std", d.norm_std, "positive values")
    scale = d.random_erase_scale
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] < 1:
        raise fail("data.random_erase_scale", scale, "[low, high] with 0 < low <= high < 1")
    ratio = d.random_erase_ratio
    if ratio and (len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]):
        raise fail("data.random_erase_ratio", ratio, "[] or [low, high] with 0 < low <= high")


def schedules_and_ranks(cfg: CN) -> None:
    """Milestones in order; CMC ranks from 1."""
    if any(r < 1 for r in cfg.test.ranks):
        raise fail("test.ranks", cfg.test.ranks, "ranks >= 1")
    if sorted(cfg.train.stepsize) != list(cfg.train.stepsize):
        raise fail("train.stepsize", cfg.train.stepsize, "increasing epochs")


def fp16_needs_cuda(cfg: CN) -> None:
    if cfg.train.amp == "fp16" and not cfg.use_gpu:
        raise fail("train.amp", cfg.train.amp, "'' or 'bf16' when use_gpu is False "
                   "(float16 autocast needs CUDA)")


def student_needs_a_teacher(cfg: CN) -> None:
    """The student stage names its teacher (the file may not exist yet: checked at build)."""
    if cfg.vkd.stage == "student" and not cfg.vkd.teacher_checkpoint:
        raise fail("vkd.teacher_checkpoint", cfg.vkd.teacher_checkpoint,
                   "the teacher's checkpoint (ours, torchreid's, or a reference experiment "
                   "folder) when vkd.stage is 'student'")


def cache_needs_eval_bn(cfg: CN) -> None:
    """The teacher cache stores per-frame features: only an eval-mode teacher is a function of
    one frame (batch statistics depend on the whole batch)."""
    if cfg.vkd.teacher_cache and cfg.vkd.teacher_bn != "eval":
        raise fail("vkd.teacher_bn", cfg.vkd.teacher_bn,
                   "'eval' with vkd.teacher_cache True: with batch statistics the teacher's "
                   "feature of a frame depends on the rest of its batch, so it cannot be cached")


def gpu_decoding_needs_cuda_and_jpeg(cfg: CN) -> None:
    """``data.decode_device cuda``: nvJPEG needs CUDA, JPEG frames, and cannot replace a
    corrupt frame inside the loader workers (they only read bytes)."""
    if cfg.data.decode_device != "cuda":
        return
    if not (cfg.use_gpu and torch.cuda.is_available()):
        raise fail("data.decode_device", "cuda", "'cpu' here: decoding on the GPU needs CUDA "
                   "and use_gpu True")
    for name in cfg.data.sources:
        fmt = dataset_class(name).FRAME_FORMAT
        if fmt != "jpeg":
            raise fail("data.decode_device", "cuda", f"'cpu' for {name}: its frames are not "
                       f"JPEG files ({fmt or 'format unknown'}), which nvJPEG decodes")
    if cfg.data.skip_corrupt:
        raise fail("data.decode_device", "cuda", "'cpu' with data.skip_corrupt True: the "
                   "workers only read bytes, so a corrupt frame cannot be replaced there")


def world_fits(cfg: CN) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1): each rank takes P / world-size whole identities
    of our sampler's global batch, and the backend exists on this machine."""
    world = env_world_size()
    if world <= 1:
        return
    if cfg.sampler.train_sampler != MULTIVIEW_SAMPLER:
        raise fail("sampler.train_sampler", cfg.sampler.train_sampler,
                   f"{MULTIVIEW_SAMPLER} under torchrun (it splits the global batch by "
                   f"identity across the {world} processes)")
    p = cfg.train.batch_size // cfg.sampler.num_instances
    if p % world:
        raise fail("train.batch_size", cfg.train.batch_size,
                   f"P x K items with P = {p} identities divisible by the world size {world} "
                   f"(K = sampler.num_instances = {cfg.sampler.num_instances}): each process "
                   "takes P / world-size whole identities")
    if not cfg.train.dist_gather and p // world < 2:
        raise fail("train.dist_gather", False,
                   f"True, or P = {p} identities of at least 2 x the world size {world}: "
                   "without the gather each process's triplet loss sees only its own "
                   f"{p // world} identity, and needs a negative")
    try:
        resolve_backend(cfg.train.dist_backend, bool(cfg.use_gpu))
    except ValueError:
        raise fail("train.dist_backend", cfg.train.dist_backend,
                   "'gloo' or 'auto': nccl needs CUDA, which this process does not have (no "
                   "GPU, or use_gpu False)") from None


#: The rules that relate keys, in the order they are checked.
RULES: List[Callable[[CN], None]] = [
    registered_names, student_sees_fewer_frames, batch_is_p_times_k, augmentation_shapes,
    schedules_and_ranks, fp16_needs_cuda, student_needs_a_teacher, cache_needs_eval_bn,
    gpu_decoding_needs_cuda_and_jpeg, world_fits,
]


def validate_config(cfg: CN) -> CN:
    """Checks that every value is possible and that values agree with each other.

    Raises:
        ValueError: naming the key, the value and what is allowed.
    """
    for key, allowed in CHOICES.items():
        one_of(key, get_key(cfg, key), allowed)
    for key, allowed in RANGES.items():
        in_range(key, get_key(cfg, key), allowed)
    for rule in RULES:
        rule(cfg)
    return cfg
