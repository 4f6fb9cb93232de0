"""The training step next to its bare compute (fp32, channels_last, bf16; teacher stage).

The step is fed as training feeds it: one batch drawn from the training loader of a synthetic
world written at ``--height`` x ``--width`` (pinned for CUDA), which the timed step moves to
the device; whatever finishing the loader leaves to the step is timed with it. The bare
compute runs the same two networks on a float batch already in device memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
import types
from typing import Any, Callable, Dict, Tuple

import numpy as np
import torch

from vkd_torchreid.apps.benchmark.common import timeit_interleaved
from vkd_torchreid.apps.benchmark.world import DATASET, write_world
from vkd_torchreid.config import build_config, get_default_config
from vkd_torchreid.data.batch import Batch
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine import DistillOptions, EngineOptions, TeacherEngine, VKDEngine
from vkd_torchreid.engine.targets import CachedTeacherTargets, CacheRows
from vkd_torchreid.models import build_model
from vkd_torchreid.utils.device import autocast, to_device

MODES = {"fp32": (False, ""), "channels_last": (True, ""), "bf16": (True, "bf16")}
CACHED_MODES = ("fp32", "bf16")  # the cached step is timed next to these modes' steps


# --------------------------------------------------------------------------- step
def _fake_dm() -> Any:
    return types.SimpleNamespace(train_loader=[], train_loader_for=lambda rows: [],
                                 test_loader={}, sources=[], targets=[])


def _batch(args: argparse.Namespace, n: int) -> Batch:
    """A random float batch of P x K items of ``n`` frames (the dist benchmark's input)."""
    b = args.p * args.k
    return Batch(img=torch.randn(b, n, 3, args.height, args.width),
                 pid=torch.arange(args.p).repeat_interleave(args.k),
                 camid=torch.zeros(b, dtype=torch.int64))


def loader_config(args: argparse.Namespace, root: str, use_gpu: bool, stage: str,
                  workers: int, *extra: str) -> Any:
    """The config of a ``stage`` run on the world at ``root`` with the benchmark's P, K, N, M,
    size, model, and ``workers`` loader workers (``extra``: more KEY VALUE overrides)."""
    student = ["vkd.teacher_checkpoint", "(unused)", "vkd.student_frames", str(args.m)]
    return build_config("", [
        "data.root", root, "data.sources", f"['{DATASET}']", "data.targets", f"['{DATASET}']",
        "data.height", str(args.height), "data.width", str(args.width),
        "data.workers", str(workers), "use_gpu", str(use_gpu), "model.name", args.model,
        "model.pretrained", "False", "vkd.stage", stage, *(student if stage == "student" else []),
        "train.batch_size", str(args.p * args.k), "sampler.num_instances", str(args.k),
        "video.seq_len", str(args.n), *extra])


def _loader_batch(args: argparse.Namespace, root: str, use_gpu: bool, stage: str,
                  cache: bool = False) -> Tuple[VKDDataManager, Any, Any]:
    """A data manager on the world at ``root`` and the first batch of its training loader
    (0 workers: the batch a worker would deliver, finished as training finishes it), and the
    teacher-cache row function. With ``cache`` the items carry teacher-cache rows and only the
    student's M frames."""
    extra = ["vkd.teacher_bn", "eval"] if cache else []
    dm = VKDDataManager.from_config(loader_config(args, root, use_gpu, stage, 0, *extra))
    rows = CacheRows.of(dm.train_tracklets, flip=True) if cache else None
    return dm, next(iter(dm.train_loader_for(rows))), rows


def _options(use_gpu: bool, amp: str = "", channels_last: bool = False,
             m: int = 2) -> Tuple[EngineOptions, DistillOptions]:
    """The engines' options from the default config with these settings."""
    cfg = get_default_config()
    cfg.use_gpu, cfg.train.amp, cfg.train.channels_last = use_gpu, amp, channels_last
    cfg.vkd.student_frames = m
    return EngineOptions.from_config(cfg), DistillOptions.from_config(cfg)


def _engine(args: argparse.Namespace, use_gpu: bool, cl: bool, amp: str,
            teacher_bn: str = "batch", dm: Any = None, targets: Any = None) -> VKDEngine:
    """A student-stage engine on randomly initialised networks, in training mode."""
    torch.manual_seed(0)
    teacher = build_model(args.model, args.classes, loss="triplet", pretrained=False)
    student = build_model(args.model, args.classes, loss="triplet", pretrained=False)
    opts, distill = _options(use_gpu, amp, cl, args.m)
    distill = dataclasses.replace(distill, teacher_bn=teacher_bn,
                                  targets="live" if targets is None else targets.name)
    engine = VKDEngine(dm if dm is not None else _fake_dm(), student, teacher,
                       torch.optim.Adam(student.parameters(), lr=1e-4), None, opts, distill,
                       targets=targets)
    engine.set_model_mode("train")
    return engine


def _cached_step(args: argparse.Namespace, root: str, use_gpu: bool, cl: bool,
                 amp: str) -> Callable[[], Any]:
    """The student step with the teacher cache: M decoded frames, N rows gathered from an
    in-memory float16 cache, the teacher's BNNeck and classifier on their mean."""
    dm, batch, rows = _loader_batch(args, root, use_gpu, "student", cache=True)
    n_rows = 2 * sum(len(t[0]) for t in dm.train_tracklets)
    dim = build_model(args.model, 1, pretrained=False).feature_dim
    rng = np.random.default_rng(0)
    targets = CachedTeacherTargets.in_memory(
        rng.standard_normal((n_rows, dim)).astype(np.float16), rows)
    engine = _engine(args, use_gpu, cl, amp, teacher_bn="eval", dm=dm, targets=targets)
    return functools.partial(engine.forward_backward, batch)


def _parts(engine: VKDEngine, args: argparse.Namespace, device: torch.device, cl: bool,
           amp: str) -> Dict[str, Callable[[], Any]]:
    """The step's bare compute (teacher forward, student forward and backward) on a float
    batch already in device memory, the teacher's forward alone and the optimiser step alone,
    on the engine's own networks."""
    img = _batch(args, args.n).img
    x, xs = to_device(img, device, cl), to_device(img[:, :args.m], device, cl)

    def bare() -> None:
        with autocast(device, amp):
            with torch.inference_mode():
                engine.teacher.forward_features(x)
            emb, logits = engine.model.forward_features(xs)
        engine.optimizer.zero_grad(set_to_none=True)
        (emb.float().sum() + logits.float().sum()).backward()

    def teacher_fwd() -> None:
        with autocast(device, amp), torch.inference_mode():
            engine.teacher.forward_features(x)

    return {"bare": bare, "teacher_fwd": teacher_fwd, "optimizer": engine.optimizer.step}


def bench_step(args: argparse.Namespace) -> Dict[str, Any]:
    """Each mode's step, bare compute, teacher forward, optimiser step and (fp32, bf16) cached
    step, timed in turn so that the machine's drift does not enter their ratios."""
    use_gpu = torch.cuda.is_available() and not args.cpu
    with tempfile.TemporaryDirectory(prefix="vkd_bench_step_") as root:
        write_world(root, train_ids=args.p, height=args.height, width=args.width,
                    frames=args.n)
        return _bench_step(args, root, use_gpu)


def _bench_step(args: argparse.Namespace, root: str, use_gpu: bool) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    device = torch.device("cuda" if use_gpu else "cpu")
    dm, batch, _ = _loader_batch(args, root, use_gpu, "student")
    for mode, (cl, amp) in MODES.items():
        engine = _engine(args, use_gpu, cl, amp, dm=dm)
        fns = {"vkd": functools.partial(engine.forward_backward, batch),
               **_parts(engine, args, device, cl, amp)}
        if mode in CACHED_MODES:
            fns["cached"] = _cached_step(args, root, use_gpu, cl, amp)
        t = timeit_interleaved(fns, args.reps)
        out[mode] = {"vkd_s": t["vkd"], "bare_s": t["bare"], "overhead": t["vkd"] / t["bare"] - 1,
                     "teacher_fwd_s": t["teacher_fwd"], "optimizer_s": t["optimizer"]}
        print(f"step {mode:14s} vkd {t['vkd']:7.3f} s   bare {t['bare']:7.3f} s   "
              f"overhead {100 * (t['vkd'] / t['bare'] - 1):+5.1f}%   teacher forward "
              f"{t['teacher_fwd']:7.3f} s   optimiser {t['optimizer']:6.3f} s", flush=True)
        if "cached" in t:
            without_teacher = t["vkd"] - t["teacher_fwd"]
            out[f"cached_{mode}"] = {"vkd_s": t["cached"],
                                     "vs_step_without_teacher": t["cached"] / without_teacher}
            print(f"step cached_{mode:7s} vkd {t['cached']:7.3f} s   (step - teacher forward: "
                  f"{without_teacher:7.3f} s, ratio {t['cached'] / without_teacher:.2f})",
                  flush=True)
        del engine, fns
    torch.manual_seed(0)
    tdm, tbatch, _ = _loader_batch(args, root, use_gpu, "teacher")
    model = build_model(args.model, args.classes, loss="triplet", pretrained=False)
    engine = TeacherEngine(tdm, model, torch.optim.Adam(model.parameters(), lr=1e-4),
                           None, _options(use_gpu)[0])
    engine.set_model_mode("train")
    x = to_device(_batch(args, args.n).img, device, False)

    def bare_teacher() -> None:
        emb, logits = engine.model.forward_features(x)
        engine.optimizer.zero_grad(set_to_none=True)
        (emb.sum() + logits.sum()).backward()

    t = timeit_interleaved({"step": lambda: engine.forward_backward(tbatch),
                            "bare": bare_teacher}, args.reps)
    t_s, tb_s = t["step"], t["bare"]
    out["teacher_fp32"] = {"vkd_s": t_s, "bare_s": tb_s, "overhead": t_s / tb_s - 1}
    print(f"step teacher_fp32     step {t_s:7.3f} s   bare {tb_s:7.3f} s", flush=True)
    out["speedup_bf16_vs_fp32"] = out["fp32"]["vkd_s"] / out["bf16"]["vkd_s"]
    out["speedup_cached_bf16_vs_fp32"] = out["fp32"]["vkd_s"] / out["cached_bf16"]["vkd_s"]
    out["config"] = {"model": args.model, "P": args.p, "K": args.k, "N": args.n, "M": args.m,
                     "height": args.height, "width": args.width, "fed": "training loader"}
    return out
