"""The training step next to its bare compute (fp32, channels_last, bf16; teacher stage)."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import types
from typing import Any, Dict, Tuple

import numpy as np
import torch

from vkd_torchreid.apps.benchmark.common import timeit
from vkd_torchreid.config import get_default_config
from vkd_torchreid.engine import DistillOptions, EngineOptions, TeacherEngine, VKDEngine
from vkd_torchreid.engine.teacher_cache import TeacherCache
from vkd_torchreid.models import build_model
from vkd_torchreid.utils.device import autocast, to_device

MODES = {"fp32": (False, ""), "channels_last": (True, ""), "bf16": (True, "bf16")}


# --------------------------------------------------------------------------- step
def _fake_dm() -> Any:
    return types.SimpleNamespace(train_loader=[], test_loader={}, sources=[], targets=[])


def _batch(args: argparse.Namespace, n: int) -> Dict[str, torch.Tensor]:
    b = args.p * args.k
    return {"img": torch.randn(b, n, 3, args.height, args.width),
            "pid": torch.arange(args.p).repeat_interleave(args.k),
            "camid": torch.zeros(b, dtype=torch.int64)}


def _options(use_gpu: bool, amp: str = "", channels_last: bool = False,
             m: int = 2) -> Tuple[EngineOptions, DistillOptions]:
    """The engines' options from the default config with these settings."""
    cfg = get_default_config()
    cfg.use_gpu, cfg.train.amp, cfg.train.channels_last = use_gpu, amp, channels_last
    cfg.vkd.student_frames = m
    return EngineOptions.from_config(cfg), DistillOptions.from_config(cfg)


def _teacher_fwd(engine: VKDEngine, batch: Dict[str, torch.Tensor], device: torch.device,
                 cl: bool, amp: str, reps: int) -> float:
    """The teacher's forward on the N frames of the batch, alone."""
    def run() -> None:
        x = to_device(batch["img"], device, cl)
        with autocast(device, amp), torch.inference_mode():
            engine.teacher.forward_features(x)

    return timeit(run, reps)


def _cached_step(args: argparse.Namespace, use_gpu: bool, cl: bool, amp: str) -> float:
    """The student step with the teacher cache: M decoded frames, N rows gathered from an
    in-memory float16 cache, the teacher's BNNeck and classifier on their mean."""
    torch.manual_seed(0)
    teacher = build_model(args.model, args.classes, loss="triplet", pretrained=False)
    student = build_model(args.model, args.classes, loss="triplet", pretrained=False)
    opts, distill = _options(use_gpu, amp, cl, args.m)
    distill = dataclasses.replace(distill, teacher_bn="eval")
    engine = VKDEngine(_fake_dm(), student, teacher,
                       torch.optim.Adam(student.parameters(), lr=1e-4), None, opts, distill)
    b = args.p * args.k
    rows = 2 * b * args.n
    rng = np.random.default_rng(0)
    engine.teacher_cache = TeacherCache.in_memory(
        rng.standard_normal((rows, teacher.feature_dim)).astype(np.float16),
        np.arange(b) * args.n, flip=True)
    engine.set_model_mode("train")
    batch = _batch(args, args.m)
    batch["teacher_rows"] = torch.from_numpy(rng.integers(0, rows, (b, args.n)))
    return timeit(functools.partial(engine.forward_backward, batch), args.reps)


def bench_step(args: argparse.Namespace) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    use_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if use_gpu else "cpu")
    for mode, (cl, amp) in MODES.items():
        torch.manual_seed(0)
        teacher = build_model(args.model, args.classes, loss="triplet", pretrained=False)
        student = build_model(args.model, args.classes, loss="triplet", pretrained=False)
        opts, distill = _options(use_gpu, amp, cl, args.m)
        engine = VKDEngine(_fake_dm(), student, teacher,
                           torch.optim.Adam(student.parameters(), lr=1e-4), None, opts, distill)
        engine.set_model_mode("train")
        batch = _batch(args, args.n)
        vkd_s = timeit(functools.partial(engine.forward_backward, batch), args.reps)

        def bare(engine: VKDEngine = engine, batch: Dict[str, torch.Tensor] = batch,
                 cl: bool = cl, amp: str = amp) -> None:
            x = to_device(batch["img"], device, cl)
            with autocast(device, amp):
                with torch.inference_mode():
                    engine.teacher.forward_features(x)
                xs = to_device(batch["img"][:, :args.m], device, cl)
                emb, logits = engine.model.forward_features(xs)
            (emb.float().sum() + logits.float().sum()).backward()

        bare_s = timeit(bare, args.reps)
        t_fwd = _teacher_fwd(engine, batch, device, cl, amp, args.reps)
        out[mode] = {"vkd_s": vkd_s, "bare_s": bare_s, "overhead": vkd_s / bare_s - 1,
                     "teacher_fwd_s": t_fwd}
        print(f"step {mode:14s} vkd {vkd_s:7.3f} s   bare {bare_s:7.3f} s   "
              f"overhead {100 * (vkd_s / bare_s - 1):+5.1f}%   teacher forward {t_fwd:7.3f} s",
              flush=True)
    for mode in ("fp32", "bf16"):
        cl, amp = MODES[mode]
        cached = _cached_step(args, use_gpu, cl, amp)
        without_teacher = out[mode]["vkd_s"] - out[mode]["teacher_fwd_s"]
        out[f"cached_{mode}"] = {"vkd_s": cached,
                                 "vs_step_without_teacher": cached / without_teacher}
        print(f"step cached_{mode:7s} vkd {cached:7.3f} s   (step - teacher forward: "
              f"{without_teacher:7.3f} s, ratio {cached / without_teacher:.2f})", flush=True)
    torch.manual_seed(0)
    model = build_model(args.model, args.classes, loss="triplet", pretrained=False)
    engine = TeacherEngine(_fake_dm(), model, torch.optim.Adam(model.parameters(), lr=1e-4),
                           None, _options(use_gpu)[0])
    engine.set_model_mode("train")
    batch = _batch(args, args.n)
    t_s = timeit(lambda: engine.forward_backward(batch), args.reps)

    def bare_teacher() -> None:
        emb, logits = engine.model.forward_features(to_device(batch["img"], device, False))
        (emb.sum() + logits.sum()).backward()

    tb_s = timeit(bare_teacher, args.reps)
    out["teacher_fp32"] = {"vkd_s": t_s, "bare_s": tb_s, "overhead": t_s / tb_s - 1}
    print(f"step teacher_fp32     step {t_s:7.3f} s   bare {tb_s:7.3f} s", flush=True)
    out["speedup_bf16_vs_fp32"] = out["fp32"]["vkd_s"] / out["bf16"]["vkd_s"]
    out["speedup_cached_bf16_vs_fp32"] = out["fp32"]["vkd_s"] / out["cached_bf16"]["vkd_s"]
    out["config"] = {"model": args.model, "P": args.p, "K": args.k, "N": args.n, "M": args.m,
                     "height": args.height, "width": args.width}
    return out
