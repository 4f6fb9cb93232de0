"""The real training loader and the real training step together: where a step's time goes.

For each decode device (``--decode-device``) and loader worker count (``--loader-workers``) it
builds the run as training does (``VKDDataManager.from_config``, ``build_engine``: the
backend flags, the networks in their memory format, the optimiser) on a synthetic
DukeMTMC-VideoReID written at ``--height`` x ``--width`` in parallel over the cores, runs
``--warmup-steps`` steps (worker start-up, cuDNN's algorithm search), then ``--steps`` steps
of the ``--stage`` (randomly initialised networks: speed only), and reports:

- ``frames_per_s``: frames the loader decoded and the step consumed, per second of wall time
  (the last step closed by a device synchronisation);
- ``wait_share``: the share of that wall time spent in the loader's ``next()``, as the
  training log's ``data_wait_s`` measures it (on CUDA the previous step's last kernels may
  still run meanwhile, so it bounds the device's idle time from above);
- ``step_s``: the step's own compute, the median of ``--reps`` further steps on a batch in
  hand (fed as training feeds it, each closed by a device synchronisation);
- ``loader_fps``: the loader alone, over one more epoch, with what the step would do to each
  batch before its forward (on CUDA: the copy, the decoding with ``data.decode_device cuda``,
  normalisation and erasing on the device), the last batch closed by a synchronisation: the
  rate the data path could feed a step that took no time, and ``loader_next_share``, the
  share of that time spent in the loader's ``next()`` (the rest is the finishing on the
  device): which side limits it.
"""
from __future__ import annotations

import argparse
import functools
import gc
import tempfile
import time
from typing import Any, Dict, List, Tuple

import torch

from vkd_torchreid.apps.benchmark.common import synchronize, timed, timeit
from vkd_torchreid.apps.benchmark.step import loader_config
from vkd_torchreid.apps.benchmark.world import write_world
from vkd_torchreid.data.gpu_decode import DECODE_DEVICES
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine.build import build_engine
from vkd_torchreid.models import build_model
from vkd_torchreid.utils.timing import TimedIterable


def decode_devices(text: str) -> List[str]:
    """``'cpu,cuda'`` -> ``['cpu', 'cuda']``."""
    devices = [p.strip() for p in text.split(",") if p.strip()]
    if not devices or any(d not in DECODE_DEVICES for d in devices):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cpu,cuda")
    return list(dict.fromkeys(devices))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=("teacher", "student"), default="teacher",
                        help="pipeline: the training stage whose step runs")
    parser.add_argument("--amp", choices=("", "bf16", "fp16"), default="",
                        help="pipeline: train.amp of the step")
    parser.add_argument("--channels-last", action="store_true",
                        help="pipeline: train.channels_last of the step")
    parser.add_argument("--decode-device", type=decode_devices, default=None,
                        metavar="cpu[,cuda]", help="pipeline: data.decode_device values "
                        "(default: cpu, and cuda where CUDA is)")
    parser.add_argument("--steps", type=int, default=20, help="pipeline: timed steps")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="pipeline: steps run before timing")


def _devices(args: argparse.Namespace, use_gpu: bool) -> List[str]:
    if args.decode_device:
        if "cuda" in args.decode_device and not use_gpu:
            raise ValueError("--decode-device cuda needs CUDA (and no --cpu)")
        return args.decode_device
    return ["cpu", "cuda"] if use_gpu else ["cpu"]


def _loader_fps(args: argparse.Namespace, engine: Any) -> Tuple[float, float]:
    """(frames/s, share of the time in the loader's ``next()``) of one more epoch of the
    training loader alone, each batch brought to the step's device as the step brings it
    (decoded, normalised and erased there on CUDA). The rest of the time is that finishing:
    the share says which side limits the rate."""
    loader = TimedIterable(engine.train_loader)
    batches = iter(loader)
    frames_per_batch = args.p * args.k * args.n
    for _ in range(args.warmup_steps):
        next(batches).device_images(engine.device, engine.options.channels_last)
    synchronize()
    loader.reset()
    start, n = time.perf_counter(), 0
    for batch in batches:
        batch.device_images(engine.device, engine.options.channels_last)
        n += 1
    synchronize()
    wall = max(time.perf_counter() - start, 1e-9)
    return n * frames_per_batch / wall, loader.wait_s / wall


def _run(args: argparse.Namespace, root: str, use_gpu: bool, decode: str,
         workers: int) -> Dict[str, Any]:
    """One configuration: warm-up, the timed steps, then the step alone."""
    # A tiny learning rate: the cost of every step is the same and the random networks do not
    # drift over the timed steps (the non-finite losses seen with GPU decoding came anyway).
    extra = ["train.amp", args.amp, "train.channels_last", str(args.channels_last),
             "train.print_freq", "1000000", "train.lr", "1e-9",
             "data.decode_device", decode]
    cfg = loader_config(args, root, use_gpu, args.stage, workers, *extra)
    dm = VKDDataManager.from_config(cfg)
    torch.manual_seed(0)
    teacher = (build_model(cfg.model.name, dm.num_train_pids, loss="triplet", pretrained=False)
               if args.stage == "student" else None)
    engine = build_engine(cfg, dm, teacher=teacher, callbacks=[])
    engine.set_model_mode("train")
    loader = TimedIterable(engine.train_loader)
    batches = iter(loader)
    for _ in range(args.warmup_steps):
        engine.forward_backward(next(batches))
    synchronize()
    loader.reset()
    start = time.perf_counter()
    for _ in range(args.steps):
        batch = next(batches)
        engine.forward_backward(batch)
    synchronize()
    wall = time.perf_counter() - start
    wait = loader.wait_s
    step_s = timeit(functools.partial(engine.forward_backward, batch), args.reps, warmup=0)
    frames = args.steps * args.p * args.k * args.n
    row = {"decode_device": decode, "workers": workers, "frames_per_s": frames / wall,
           "step_s": step_s, "wait_s": wait, "wall_s": wall, "wait_share": wait / wall,
           "steps": args.steps}
    row["loader_fps"], row["loader_next_share"] = _loader_fps(args, engine)
    del batches, loader, engine, dm, teacher  # persistent workers end with their loader
    gc.collect()
    return row


def bench_pipeline(args: argparse.Namespace) -> Dict[str, Any]:
    """Loader and step together for each decode device and worker count (module docstring)."""
    if args.steps < 1 or args.warmup_steps < 0:
        raise ValueError("--steps must be at least 1 and --warmup-steps at least 0")
    use_gpu = torch.cuda.is_available() and not args.cpu
    devices = _devices(args, use_gpu)
    out: Dict[str, Any] = {"config": {
        "model": args.model, "stage": args.stage, "P": args.p, "K": args.k, "N": args.n,
        "M": args.m, "height": args.height, "width": args.width, "amp": args.amp,
        "channels_last": args.channels_last, "device": "cuda" if use_gpu else "cpu"},
        "rows": []}
    with tempfile.TemporaryDirectory(prefix="vkd_bench_pipeline_") as root:
        # one epoch holds every step: P identities a batch
        counts, write_s = timed(functools.partial(
            write_world, root, train_ids=args.p * (args.warmup_steps + args.steps),
            height=args.height, width=args.width, frames=args.n))
        out["world"] = {**counts, "write_s": write_s}
        print(f"pipeline world: {counts['images']} frames of {args.height}x{args.width} "
              f"written in {write_s:.1f} s", flush=True)
        for decode in devices:
            for workers in args.loader_workers:
                row = _run(args, root, use_gpu, decode, workers)
                out["rows"].append(row)
                print(f"pipeline {args.stage} decode {decode:4s} workers {workers:2d}: "
                      f"{row['frames_per_s']:8.0f} frames/s   step {1000 * row['step_s']:8.1f} "
                      f"ms   waiting for data {100 * row['wait_share']:5.1f}% of the wall time   "
                      f"loader alone {row['loader_fps']:8.0f} frames/s "
                      f"({100 * row['loader_next_share']:.0f}% in next())",
                      flush=True)
    return out
