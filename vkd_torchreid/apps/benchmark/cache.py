"""The teacher cache: its build (ms per frame) and the student loader with and without it."""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, Dict

import torch

from vkd_torchreid.apps.benchmark.common import timed, timeit


def bench_cache(args: argparse.Namespace) -> Dict[str, Any]:
    """Cache build time per frame (and flip) of ``--model`` on a synthetic MARS, then the
    student loader's items/s and decoded frames/s without and with the cache (M of N
    decoded), for each ``--loader-workers`` count."""
    from vkd_torchreid.config import build_config
    from vkd_torchreid.data.manager import VKDDataManager
    from vkd_torchreid.engine import teacher_cache as tc
    from vkd_torchreid.engine.targets import CacheRows
    from vkd_torchreid.models import build_model
    from vkd_torchreid.synthetic import write_synthetic

    out: Dict[str, Any] = {"items_per_s": {}, "frames_per_s": {}}
    b = args.p * args.k
    with tempfile.TemporaryDirectory(prefix="vkd_bench_cache_") as root:
        write_synthetic("vkd_mars", root, ids=2 * args.p * args.loader_batches, cams=4,
                        tracklets=2, frames=8, seed=0, height=args.src_height,
                        width=args.src_width)

        def manager(workers: int) -> VKDDataManager:
            return VKDDataManager.from_config(build_config("", [
                "data.root", root, "data.height", str(args.height), "data.width",
                str(args.width), "vkd.stage", "student", "vkd.teacher_checkpoint", "(unused)",
                "vkd.teacher_bn", "eval", "vkd.student_frames", str(args.m),
                "train.batch_size", str(b), "sampler.num_instances", str(args.k),
                "video.seq_len", str(args.n), "data.workers", str(workers), "use_gpu", "False"]))

        dm = manager(0)
        use_gpu = torch.cuda.is_available() and not args.cpu
        device = torch.device("cuda" if use_gpu else "cpu")
        teacher = build_model(args.model, dm.num_train_pids, pretrained=False).to(device).eval()
        key = tc.CacheKey(teacher="benchmark", arch=teacher.arch, last_stride=1,
                          feature_dim=teacher.feature_dim, datasets=("vkd_mars",), frames="",
                          height=args.height, width=args.width, norm_mean=(0.0,),
                          norm_std=(1.0,), resize=tc.RESIZE_VERSION, flip=True, precision="")
        frames = sum(len(t[0]) for t in dm.train_tracklets)
        amp = "bf16" if device.type == "cpu" else "fp16"  # as a user would build it
        teacher = teacher.to(memory_format=torch.channels_last)
        cache, build_s = timed(lambda: tc.open_or_build(
            teacher, dm.train_tracklets, key, os.path.join(root, "cache"), dm.augment, device,
            amp=amp, channels_last=True, batch_size=32))
        out["build_ms_per_frame"] = 1000 * build_s / frames  # each frame and its flip
        out["frames"], out["build_precision"] = frames, f"{amp} channels_last"
        print(f"cache build ({args.model}, {amp}, {frames} frames + flips): "
              f"{out['build_ms_per_frame']:.1f} ms/frame", flush=True)
        for workers in args.loader_workers:
            for cached in (False, True):
                dm = manager(workers)
                rows = CacheRows.of(dm.train_tracklets, cache.flip) if cached else None
                loader = dm.train_loader_for(rows)
                decoded = []

                def epoch(loader: Any = loader, decoded: list = decoded) -> None:
                    decoded.append(sum(batch.decoded for batch in loader))

                seconds = timeit(epoch, args.reps)
                items = len(loader) * b
                name = f"{'cached' if cached else 'uncached'}_w{workers}"
                out["items_per_s"][name] = items / seconds
                out["frames_per_s"][name] = decoded[-1] / seconds
                print(f"student loader {name:12s} {items / seconds:8.1f} items/s   "
                      f"{decoded[-1] / seconds:8.1f} decoded frames/s", flush=True)
            out[f"speedup_w{workers}"] = (out["items_per_s"][f"cached_w{workers}"]
                                          / out["items_per_s"][f"uncached_w{workers}"])
    return out
