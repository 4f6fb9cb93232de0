"""Configuration: torchreid-style yacs sections plus a ``vkd`` section.

All defaults live here, and they are the reference defaults of the paper's code (see
DESIGN.md). Key names follow torchreid's ``scripts/default_config.py`` wherever the two
overlap, so a torchreid user feels at home.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Sequence

from yacs.config import CfgNode as CN

from vkd_torchreid.evaluation import METRICS
from vkd_torchreid.utils.progress import PROGRESS_MODES

#: Names accepted by ``vkd.view_strategy`` for the student stage.
VIEW_STRATEGIES = ("multiview", "multiview_random", "temporal")
#: Stages of the method.
STAGES = ("teacher", "student")
#: Teacher BatchNorm behaviour while it is queried by the student stage.
TEACHER_BN_MODES = ("batch", "eval")
#: Loss between teacher and student logits.
LOGITS_LOSSES = ("kl", "mse")
#: Autocast modes for training and feature extraction ('' is float32).
AMP_MODES = ("", "bf16", "fp16")
#: Test-time frame sampling of a tracklet.
TEST_SAMPLE_METHODS = ("evenly", "all")
#: How ATRW training tracklets (and so views) are formed.
ATRW_VIEWS = ("side", "video", "video_side")
#: How DukeMTMC-VideoReID tracklets are formed: one per folder (the dataset's protocol) or
#: the reference's merge of consecutive files of one identity and camera.
DUKE_TRACKLETS = ("folder", "reference")
#: Which gallery track is a VeRi query image's video query: the first in test_track.txt
#: (the reference) or the longest.
VERI_QUERY_TRACKS = ("first", "longest")
#: How random erasing draws the box's aspect ratio: uniform in the range (torchvision 0.4,
#: the reference) or log-uniform (torchvision >= 0.5).
ERASE_RATIO_DISTS = ("uniform", "log")
#: Our sampler; torchreid's own sampler names are accepted next to it.
MULTIVIEW_SAMPLER = "MultiViewSampler"


def get_default_config() -> CN:
    """Returns a fresh CfgNode with every key the project knows and its default."""
    cfg = CN()

    cfg.model = CN()
    cfg.model.name = "vkd_resnet50"
    cfg.model.pretrained = True  # ImageNet weights from the torch hub cache or pretrained_path
    cfg.model.pretrained_path = ""  # file or folder with torchvision ImageNet weights
    cfg.model.load_weights = ""  # weights to start from (ours, torchreid's, or the reference's)
    cfg.model.resume = ""  # checkpoint to resume training from (as --resume PATH)
    # Allow legacy pickled checkpoints (torch.load(weights_only=False)); --trust-checkpoint
    # sets it. Only for files whose source you trust.
    cfg.model.trust_checkpoint = False
    cfg.model.last_stride = 1

    cfg.data = CN()
    cfg.data.type = "video"
    cfg.data.root = "reid-data"
    cfg.data.sources = ["vkd_mars"]
    cfg.data.targets = ["vkd_mars"]
    cfg.data.workers = 4
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.norm_mean = [0.485, 0.456, 0.406]
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.save_dir = "log"
    cfg.data.pad = 10  # pixels of padding before the random crop
    cfg.data.flip_prob = 0.5
    cfg.data.random_erase_prob = 0.5
    cfg.data.random_erase_scale = [0.02, 0.4]
    cfg.data.random_erase_ratio = []  # empty: the dataset's default (people 0.3-3.3, vehicles 0.7-1.4)
    cfg.data.random_erase_ratio_dist = "uniform"  # 'uniform' (the reference) or 'log'
    cfg.data.skip_corrupt = False  # replace an unreadable frame by another of its tracklet
    cfg.data.mars_query_in_gallery = True  # the reference puts MARS query tracklets in the gallery
    cfg.data.atrw_views = "side"  # how ATRW training tracklets/views are formed
    cfg.data.duke_tracklets = "folder"  # 'folder' (standard protocol) or 'reference'
    cfg.data.veri_query_track = "longest"  # 'longest' or 'first' (the reference)

    cfg.sampler = CN()
    cfg.sampler.train_sampler = MULTIVIEW_SAMPLER
    cfg.sampler.num_instances = 4  # K items per identity in a batch

    cfg.video = CN()
    cfg.video.seq_len = 8  # N: frames per item in training (teacher sees all) and at test time
    cfg.video.test_seq_len = 0  # frames per test tracklet; 0: video.seq_len (VeRi trains N=1)
    cfg.video.sample_method = "evenly"  # test-time sampling: 'evenly' (first of N chunks) or 'all'
    cfg.video.pooling_method = "avg"
    cfg.video.test_chunk = 64  # frames per forward pass when sample_method is 'all'

    cfg.train = CN()
    cfg.train.optim = "adam"
    cfg.train.lr = 1e-4
    cfg.train.weight_decay = 1e-5
    cfg.train.max_epoch = 300
    cfg.train.batch_size = 32  # P x K items (8 x 4 for the teacher on MARS)
    cfg.train.lr_scheduler = "multi_step"
    cfg.train.stepsize = [100, 200]
    cfg.train.gamma = 0.1
    cfg.train.seed = 1
    cfg.train.print_freq = 20
    cfg.train.channels_last = False
    cfg.train.amp = ""  # '', 'bf16' (CPU and CUDA) or 'fp16' (CUDA, with GradScaler)
    cfg.train.adam_beta1 = 0.9
    cfg.train.adam_beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = "triplet"  # CE + triplet, as the reference
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = False
    cfg.loss.softmax.epsilon = 0.1
    cfg.loss.triplet = CN()
    cfg.loss.triplet.soft_margin = True  # log(1 + exp(d_ap - d_an)); False: hinge with margin
    cfg.loss.triplet.margin = 0.3
    cfg.loss.triplet.weight_t = 1.0
    cfg.loss.triplet.weight_x = 1.0

    cfg.test = CN()
    cfg.test.batch_size = 32
    cfg.test.dist_metric = "cosine"
    cfg.test.normalize_feature = True
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False
    cfg.test.eval_freq = -1
    cfg.test.start_eval = 0
    cfg.test.rerank = False
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    cfg.test.amp = ""  # autocast mode for feature extraction
    cfg.test.progress = "auto"  # extraction progress bar: 'auto' (on a terminal), 'always', 'never'

    cfg.vkd = CN()
    cfg.vkd.stage = "teacher"
    cfg.vkd.teacher_checkpoint = ""  # ours, torchreid's, or a released reference experiment
    cfg.vkd.teacher_arch = ""  # teacher model name when it differs from model.name
    # The student's own stage-1 (teacher-stage) model for cross-distillation, as the
    # reference's --student; empty: a copy of the teacher (or ImageNet for another backbone).
    cfg.vkd.student_checkpoint = ""
    cfg.vkd.student_frames = 2  # M frames of the teacher's N that the student sees
    cfg.vkd.tau = 10.0
    cfg.vkd.alpha = 0.1  # weight of the KD term
    cfg.vkd.beta = 1e-4  # weight of the distance-preservation term
    cfg.vkd.logits_loss = "kl"
    cfg.vkd.reinit_layer4 = True
    cfg.vkd.generations = 1
    cfg.vkd.generation_lr_decay = 0.1
    cfg.vkd.generation_lr_floor = 1e-5  # the reference's floor: max(lr * decay^g, floor)
    cfg.vkd.view_strategy = "multiview_random"  # the reference's; 'multiview': camera-balanced
    cfg.vkd.teacher_bn = "batch"

    cfg.demo = CN()  # tools/main.py --config-file configs/demo.yaml
    cfg.demo.enabled = False
    cfg.demo.ids = 64  # identities of the synthetic world (half train, half test)
    cfg.demo.train_ids = 0  # training identities of the world; 0: half of demo.ids
    cfg.demo.cams = 4
    cfg.demo.tracklets = 2  # per identity and camera
    cfg.demo.frames = 12
    cfg.demo.seed = 0
    cfg.demo.teacher_max_epoch = 40
    cfg.demo.val_every = 2  # epochs between validation evaluations of the teacher
    cfg.demo.patience = 3  # validations without a better mAP before the teacher stops
    cfg.demo.min_delta = 0.01  # a rise of the validation mAP smaller than this does not count
    cfg.demo.student_epoch = 20
    cfg.demo.student_stepsize = [14]  # the student's lr milestones (the teacher's: train.stepsize)
    cfg.demo.control = False  # also train the teacher on for student_epoch epochs

    cfg.use_gpu = True
    return cfg


def _section_keys(cfg: CN, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.extend(_section_keys(v, full + ".") if isinstance(v, CN) else [full])
    return keys


def _unknown_key_error(cfg: CN, key: str) -> KeyError:
    section = key.rsplit(".", 1)[0] if "." in key else ""
    node = cfg
    for part in section.split(".") if section else []:
        if not isinstance(node, CN) or part not in node:
            node = None
            break
        node = node[part]
    if isinstance(node, CN):
        valid = ", ".join(_section_keys(node, section + "." if section else ""))
        return KeyError(f"unknown config key {key!r}; valid keys of {section or 'the root'}: {valid}")
    return KeyError(f"unknown config key {key!r}; sections: {', '.join(sorted(cfg.keys()))}")


#: Keys that existed and were removed: what to do instead.
REMOVED_KEYS: Dict[str, str] = {
    "train.start_epoch": "a run continues from the epoch of its checkpoint: use --resume "
                         "[PATH] or model.resume PATH",
}


def _removed(key: str) -> KeyError:
    return KeyError(f"config key {key} was removed: {REMOVED_KEYS[key]}")


def _check_keys(default: CN, other: CN, prefix: str = "") -> None:
    for k, v in other.items():
        full = f"{prefix}{k}"
        if k == "_BASE_":
            continue
        if full in REMOVED_KEYS:
            raise _removed(full)
        if k not in default:
            raise _unknown_key_error(get_default_config(), full)
        if isinstance(v, dict) and isinstance(default[k], CN):
            _check_keys(default[k], v, full + ".")


def _load_yaml_with_base(path: str) -> CN:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        try:
            loaded = CN.load_cfg(fh)
        except Exception as exc:
            raise ValueError(f"{path}: not a valid YAML config ({exc})") from exc
    base = loaded.pop("_BASE_", None)
    if base is None:
        return loaded
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    merged = _load_yaml_with_base(base_path)
    _deep_update(merged, loaded)
    return merged


def _deep_update(dst: CN, src: CN) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def merge_from_file(cfg: CN, path: str) -> CN:
    """Merges a YAML file (with optional ``_BASE_`` inheritance) into ``cfg``.

    Raises:
        FileNotFoundError: the file (or one of its bases) does not exist.
        KeyError: the file holds a key the project does not know; the message lists the
            valid keys of that section.
    """
    loaded = _load_yaml_with_base(path)
    _check_keys(cfg, loaded)
    try:
        cfg.merge_from_other_cfg(loaded)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return cfg


def merge_from_list(cfg: CN, opts: Sequence[str]) -> CN:
    """Merges ``KEY VALUE`` overrides (``["train.lr", "0.001", ...]``) into ``cfg``."""
    if len(opts) % 2:
        raise ValueError(f"overrides come in KEY VALUE pairs, got an odd list: {list(opts)}")
    for key in opts[0::2]:
        if key in REMOVED_KEYS:
            raise _removed(key)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], CN):
                raise _unknown_key_error(cfg, key)
            node = node[part]
        if parts[-1] not in node:
            raise _unknown_key_error(cfg, key)
    try:
        cfg.merge_from_list(list(opts))
    except ValueError as exc:
        raise ValueError(f"bad override: {exc}") from exc
    return cfg


def get_key(cfg: CN, key: str) -> Any:
    """Value of a dotted key (``"loss.triplet.margin"``)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _fail(key: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"config key {key}={value!r} is invalid: expected {expected}")


def _one_of(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise _fail(key, value, f"one of {', '.join(repr(a) for a in allowed)}")


def _positive(key: str, value: float, strict: bool = True) -> None:
    if value < 0 or (strict and value == 0):
        raise _fail(key, value, "a positive number" if strict else "a number >= 0")


def validate_config(cfg: CN) -> CN:
    """Checks that every value is possible and that values agree with each other.

    Raises:
        ValueError: naming the key, the value and what is allowed.
    """
    # Local imports: the registries are filled when vkd_torchreid is imported.
    from vkd_torchreid.compat import TORCHREID_SAMPLERS, model_names, video_dataset_names

    _one_of("vkd.stage", cfg.vkd.stage, STAGES)
    _one_of("vkd.view_strategy", cfg.vkd.view_strategy, VIEW_STRATEGIES)
    _one_of("vkd.teacher_bn", cfg.vkd.teacher_bn, TEACHER_BN_MODES)
    _one_of("vkd.logits_loss", cfg.vkd.logits_loss, LOGITS_LOSSES)
    _one_of("train.amp", cfg.train.amp, AMP_MODES)
    _one_of("test.amp", cfg.test.amp, AMP_MODES)
    _one_of("video.sample_method", cfg.video.sample_method, TEST_SAMPLE_METHODS)
    _one_of("video.pooling_method", cfg.video.pooling_method, ("avg",))
    _one_of("data.type", cfg.data.type, ("video",))
    _one_of("data.atrw_views", cfg.data.atrw_views, ATRW_VIEWS)
    _one_of("data.duke_tracklets", cfg.data.duke_tracklets, DUKE_TRACKLETS)
    _one_of("data.veri_query_track", cfg.data.veri_query_track, VERI_QUERY_TRACKS)
    _one_of("data.random_erase_ratio_dist", cfg.data.random_erase_ratio_dist, ERASE_RATIO_DISTS)
    _one_of("test.dist_metric", cfg.test.dist_metric, METRICS)
    _one_of("test.progress", cfg.test.progress, PROGRESS_MODES)
    _one_of("train.optim", cfg.train.optim, ("adam", "amsgrad", "sgd", "rmsprop", "radam"))
    _one_of("train.lr_scheduler", cfg.train.lr_scheduler, ("multi_step", "single_step", "cosine"))
    _one_of("model.last_stride", cfg.model.last_stride, (1, 2))
    _one_of("sampler.train_sampler", cfg.sampler.train_sampler,
            (MULTIVIEW_SAMPLER, *TORCHREID_SAMPLERS))
    models = [m for m in model_names() if m.startswith("vkd_")]
    _one_of("model.name", cfg.model.name, models)
    if cfg.vkd.teacher_arch:
        _one_of("vkd.teacher_arch", cfg.vkd.teacher_arch, models)
    datasets = video_dataset_names()
    if not cfg.data.sources:
        raise _fail("data.sources", cfg.data.sources, f"at least one of {datasets}")
    for key, names in (("data.sources", cfg.data.sources), ("data.targets", cfg.data.targets)):
        for name in names:
            _one_of(key, name, [d for d in datasets if d.startswith("vkd_")])

    n, m = cfg.video.seq_len, cfg.vkd.student_frames
    if n < 1:
        raise _fail("video.seq_len", n, "an integer >= 1")
    if cfg.video.test_seq_len < 0:
        raise _fail("video.test_seq_len", cfg.video.test_seq_len, "0 (= video.seq_len) or more")
    if m < 1:
        raise _fail("vkd.student_frames", m, "an integer >= 1")
    if cfg.vkd.stage == "student" and m >= n:
        raise _fail("vkd.student_frames", m, f"fewer than video.seq_len={n} (M < N)")
    k, batch = cfg.sampler.num_instances, cfg.train.batch_size
    if k < 1:
        raise _fail("sampler.num_instances", k, "an integer >= 1")
    if batch < 1:
        raise _fail("train.batch_size", batch, "an integer >= 1")
    if k > batch:
        raise _fail("sampler.num_instances", k, f"at most train.batch_size={batch} (K <= P*K)")
    if cfg.sampler.train_sampler == MULTIVIEW_SAMPLER and batch % k:
        raise _fail("train.batch_size", batch,
                    f"a multiple of sampler.num_instances={k} (P x K items)")
    for key in ("vkd.alpha", "vkd.beta", "train.weight_decay", "loss.triplet.weight_t",
                "loss.triplet.weight_x", "loss.triplet.margin", "data.random_erase_prob",
                "data.flip_prob", "data.pad"):
        _positive(key, get_key(cfg, key), strict=False)
    for key in ("data.random_erase_prob", "data.flip_prob"):
        if get_key(cfg, key) > 1:
            raise _fail(key, get_key(cfg, key), "a probability in [0, 1]")
    for key, value in (("vkd.tau", cfg.vkd.tau), ("train.lr", cfg.train.lr),
                       ("data.height", cfg.data.height), ("data.width", cfg.data.width),
                       ("test.batch_size", cfg.test.batch_size),
                       ("video.test_chunk", cfg.video.test_chunk)):
        _positive(key, value)
    if not 0 < cfg.train.gamma <= 1:
        raise _fail("train.gamma", cfg.train.gamma, "a number in (0, 1]")
    if not 0 < cfg.vkd.generation_lr_decay <= 1:
        raise _fail("vkd.generation_lr_decay", cfg.vkd.generation_lr_decay, "a number in (0, 1]")
    _positive("vkd.generation_lr_floor", cfg.vkd.generation_lr_floor, strict=False)
    if cfg.vkd.generations < 1:
        raise _fail("vkd.generations", cfg.vkd.generations, "an integer >= 1")
    if cfg.train.max_epoch < 0:
        raise _fail("train.max_epoch", cfg.train.max_epoch, "an integer >= 0")
    if cfg.data.workers < 0:
        raise _fail("data.workers", cfg.data.workers, "an integer >= 0")
    if len(cfg.data.norm_mean) != 3 or len(cfg.data.norm_std) != 3:
        raise _fail("data.norm_mean/norm_std", (cfg.data.norm_mean, cfg.data.norm_std),
                    "three values each")
    if any(s <= 0 for s in cfg.data.norm_std):
        raise _fail("data.norm_std", cfg.data.norm_std, "positive values")
    scale = cfg.data.random_erase_scale
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] < 1:
        raise _fail("data.random_erase_scale", scale, "[low, high] with 0 < low <= high < 1")
    ratio = cfg.data.random_erase_ratio
    if ratio and (len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]):
        raise _fail("data.random_erase_ratio", ratio, "[] or [low, high] with 0 < low <= high")
    if cfg.test.visrank_topk < 1:
        raise _fail("test.visrank_topk", cfg.test.visrank_topk, "an integer >= 1")
    if any(r < 1 for r in cfg.test.ranks):
        raise _fail("test.ranks", cfg.test.ranks, "ranks >= 1")
    if sorted(cfg.train.stepsize) != list(cfg.train.stepsize):
        raise _fail("train.stepsize", cfg.train.stepsize, "increasing epochs")
    if cfg.train.amp == "fp16" and not cfg.use_gpu:
        raise _fail("train.amp", cfg.train.amp, "'' or 'bf16' when use_gpu is False "
                    "(float16 autocast needs CUDA)")
    if cfg.vkd.stage == "student" and not cfg.vkd.teacher_checkpoint:
        raise _fail("vkd.teacher_checkpoint", cfg.vkd.teacher_checkpoint,
                    "the teacher's checkpoint (ours, torchreid's, or a reference experiment "
                    "folder) when vkd.stage is 'student'")
    _validate_demo(cfg.demo)
    return cfg


def _validate_demo(d: CN) -> None:
    for key in ("ids", "cams", "tracklets", "frames", "teacher_max_epoch", "val_every",
                "student_epoch"):
        if d[key] < 1:
            raise _fail(f"demo.{key}", d[key], "an integer >= 1")
    if d.ids < 4:
        raise _fail("demo.ids", d.ids, "at least 4 identities (half train, half test)")
    if d.cams < 2:
        raise _fail("demo.cams", d.cams, "at least 2 cameras")
    if not 0 <= d.train_ids < d.ids:
        raise _fail("demo.train_ids", d.train_ids, f"0 (half) or 1..{d.ids - 1} (< demo.ids)")
    _positive("demo.patience", d.patience, strict=False)
    _positive("demo.min_delta", d.min_delta, strict=False)
    if sorted(d.student_stepsize) != list(d.student_stepsize):
        raise _fail("demo.student_stepsize", d.student_stepsize, "increasing epochs")


def build_config(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """Default config, then the file, then ``KEY VALUE`` overrides, validated and frozen."""
    cfg = get_default_config()
    if config_file:
        merge_from_file(cfg, config_file)
    merge_from_list(cfg, opts)
    validate_config(cfg)
    cfg.freeze()
    return cfg
