"""Benchmarks of the VKD pipeline, each next to a baseline measured in the same run.

    python tools/benchmark.py {step,loader,pipeline,eval,extract,cache,dist,search,all}
        [--json FILE]

The logic lives here (one module per benchmark); tools/benchmark.py only calls :func:`main`.

- step: one VKD student step (teacher forward on N frames, student forward/backward on M,
  all losses, optimizer step) next to the bare compute of the same batch (our backbone:
  teacher forward + student forward/backward, no loss, no optimizer), for fp32 NCHW,
  channels_last, and channels_last + bfloat16 autocast, each with the teacher's forward alone
  (``teacher_fwd_s``); the same step with the teacher cache (``cached_fp32``, ``cached_bf16``:
  M frames, N cached rows); and the teacher-stage step. The step is fed one batch of the
  training loader (as training feeds it); the bare compute a float batch already on the
  device.
- loader: frames/s of the VKD train loader on a synthetic MARS next to a plain PIL +
  torchvision-transforms pipeline of the same augmentations, for 0, 1 and 2 workers
  (``--loader-workers``), and ms per frame of ``resize`` alone, for each source frame size
  (``--source-sizes 256x128,400x170,128x64``, height x width; resized to ``--height`` x
  ``--width``).
- pipeline: the real loader and the real training step (``--stage``, ``--amp``,
  ``--channels-last``) together for ``--steps`` steps on a synthetic world written at
  ``--height`` x ``--width``, for each ``--loader-workers`` count and ``--decode-device``:
  frames/s, the step's compute, and the share of the wall time spent waiting for data.
- eval: ranking time of MARS-sized random matrices, ours (both AP modes) vs torchreid's
  Python evaluate_rank (measured on a query slice and scaled: it is linear in queries).
- extract: test-time frames/s of feature extraction, fp32 and the fast settings.
- cache: the teacher cache's build time per frame, and the student loader's items/s without
  and with the cache (which decodes M of each item's N frames).
- dist: the student step of 2 gloo processes (one thread each, each on half of the P x K
  batch; P even) next to one process with 2 threads on the whole batch (``speedup``), with the
  communication broken out: ``comm_s`` (the step minus the same step without DDP, gather or
  all-reduce) and ``gather_s`` (the step minus the step with ``dist_gather`` off). CPU only: it
  does not predict GPU scaling, where nccl runs the all-reduce over NVLink/PCIe, overlapped
  with the backward.

- search: gallery search (``vkd_torchreid.search.GalleryIndex``) for galleries of 10k, 100k
  and 1M 512-d embeddings (``--search-sizes``, ``--search-dim``): build time, queries/s and
  peak memory of exact torch search and faiss flat / IVF (with the ``search`` extra).

Median of several repetitions after a warm-up; every timed call ends with a CUDA
synchronisation when CUDA is in use (``common.timed``). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Tuple

from vkd_torchreid.apps.benchmark.cache import bench_cache
from vkd_torchreid.apps.benchmark.common import machine
from vkd_torchreid.apps.benchmark.dist import bench_dist
from vkd_torchreid.apps.benchmark.loader import bench_loader
from vkd_torchreid.apps.benchmark.pipeline import add_arguments as pipeline_arguments
from vkd_torchreid.apps.benchmark.pipeline import bench_pipeline
from vkd_torchreid.apps.benchmark.ranking import bench_eval, bench_extract
from vkd_torchreid.apps.benchmark.search import add_arguments as search_arguments
from vkd_torchreid.apps.benchmark.search import bench_search
from vkd_torchreid.apps.benchmark.step import bench_step


def _sizes(text: str) -> List[Tuple[int, int]]:
    """``'256x128,400x170'`` -> ``[(256, 128), (400, 170)]`` (height x width)."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            h, w = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected HEIGHTxWIDTH, e.g. 400x170") from None
        if h < 8 or w < 8:
            raise argparse.ArgumentTypeError(f"{part!r}: frames of at least 8x8 pixels")
        sizes.append((h, w))
    if not sizes:
        raise argparse.ArgumentTypeError("expected HEIGHTxWIDTH[,HEIGHTxWIDTH...]")
    return sizes


def _workers(text: str) -> List[int]:
    """``'0,2'`` -> ``[0, 2]``."""
    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected worker counts, e.g. 0,1,2") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected worker counts >= 0, e.g. 0,1,2")
    return list(dict.fromkeys(counts))


BENCHES = {"step": bench_step, "loader": bench_loader, "pipeline": bench_pipeline,
           "eval": bench_eval,
           "extract": bench_extract, "cache": bench_cache, "dist": bench_dist,
           "search": bench_search}


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    parser = argparse.ArgumentParser(prog="vkd-reid benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=[*BENCHES, "all"])
    parser.add_argument("--json", default="", help="write the figures to this JSON file")
    parser.add_argument("--model", default="vkd_resnet50")
    parser.add_argument("--classes", type=int, default=625)
    parser.add_argument("-p", type=int, default=4, help="identities per batch (P)")
    parser.add_argument("-k", type=int, default=2, help="items per identity (K)")
    parser.add_argument("-n", type=int, default=8, help="teacher frames per item (N)")
    parser.add_argument("-m", type=int, default=2, help="student frames per item (M)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--src-height", type=int, default=256,
                        help="synthetic frame height (without --source-sizes)")
    parser.add_argument("--src-width", type=int, default=128,
                        help="synthetic frame width (without --source-sizes)")
    parser.add_argument("--source-sizes", type=_sizes, default=None, metavar="HxW[,HxW...]",
                        help="loader: synthetic frame sizes to benchmark in turn, e.g. "
                             "256x128,400x170,128x64 (default: --src-height x --src-width)")
    parser.add_argument("--loader-workers", type=_workers, default=[0, 1, 2], metavar="N[,N...]",
                        help="loader: worker counts (default 0,1,2)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--loader-batches", type=int, default=4)
    parser.add_argument("--extract-items", type=int, default=32)
    parser.add_argument("--cpu", action="store_true", help="benchmark on the CPU even with CUDA")
    search_arguments(parser)
    pipeline_arguments(parser)
    return parser


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    result: Dict[str, Any] = {"machine": machine()}
    print(f"machine: {result['machine']}", flush=True)
    for name in (BENCHES if args.what == "all" else [args.what]):
        result[name] = BENCHES[name](args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.json}")
    return 0
