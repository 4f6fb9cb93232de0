"""The distributed student step (2 gloo processes, one core each) next to one process with two
threads on the same global batch, with its communication broken out.

Each rank builds a student-stage :class:`~vkd_torchreid.engine.VKDEngine` after joining the
process group (so the engine wraps its network in DistributedDataParallel itself) and times,
on its half of the global P x K batch (P/2 identities, as the training sampler splits it; P
even and at least 4, as the steps without the gather need two identities per rank),
interleaved:

- ``dist``: the step as in training, the embeddings gathered for the triplet and distance
  losses (``dist_gather=True``);
- ``no_gather``: the same step with ``dist_gather=False`` (DDP's gradient all-reduce and the
  loss values' all-reduce only);
- ``local``: the same step without any communication (no DDP, no gather, no all-reduce of the
  loss values): losses and optimiser step included, so ``dist - local`` is communication;
- ``bare``: the bare compute of the local half as in the step bench (teacher forward, student
  forward and backward through ``model.forward_features``; no loss, no optimiser).

Every timed call ends with a barrier, so each time is that of the slower rank and one rank's
lead on one function does not spill into the next function's time (the barrier's own latency,
well under a millisecond on the loopback, is in every row). The single-process reference runs
in the parent, before and after the ranks (``single_s``: the mean of the two medians), so a
steady drift of the machine's speed cancels in the ratio; noise from other processes on a
shared machine does not (two OpenMP threads wait at every barrier for a descheduled one).

On CPU this measures gloo over the loopback with two processes on two cores; it does not
predict GPU scaling, where nccl runs the all-reduce over NVLink/PCIe, overlapped with the
backward.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import socket
import tempfile
from typing import Any, Callable, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vkd_torchreid.apps.benchmark.common import timeit_interleaved
from vkd_torchreid.apps.benchmark.step import _batch, _engine
from vkd_torchreid.config import get_default_config
from vkd_torchreid.data.batch import Batch
from vkd_torchreid.engine import VKDEngine
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.device import to_device

WORLD_SIZE = 2
BACKEND = "gloo"
#: Timeout of the ranks' collectives: a resnet50 step at 256 x 128 takes seconds per rank.
TIMEOUT_S = 600.0
#: Per-rank medians, in the order of the table.
RANK_KEYS = ("dist", "no_gather", "local", "bare")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch(args: argparse.Namespace) -> Batch:
    """The same P x K batch (N frames per item) in every process."""
    torch.manual_seed(1)
    return _batch(args, args.n)


def _share(batch: Batch, rank: int, world: int) -> Batch:
    """Rank ``rank``'s contiguous share of the items: P / world whole identities."""
    b = batch.pid.shape[0]
    lo, hi = b * rank // world, b * (rank + 1) // world
    return Batch(img=batch.img[lo:hi], pid=batch.pid[lo:hi], camid=batch.camid[lo:hi])


def _synced(fn: Callable[[], Any]) -> Callable[[], None]:
    """``fn`` followed by a barrier: its time is the slower rank's."""
    def run() -> None:
        fn()
        dist.barrier()
    return run


def _step_fns(engine: VKDEngine, batch: Batch,
              m: int) -> Dict[str, Callable[[], Any]]:
    """The four timed functions of a rank (see the module docstring)."""
    opts = engine.options
    gather = dataclasses.replace(opts, dist_gather=True)
    no_gather = dataclasses.replace(opts, dist_gather=False)
    single = distributed.DistContext()

    def with_options(options: Any) -> None:
        engine.options = options
        try:
            engine.forward_backward(batch)
        finally:
            engine.options = opts

    def local() -> None:
        # The engine as in a single process: no DDP wrapper, no gather, no loss all-reduce.
        ctx, ddp = engine.dist, engine._ddp
        engine.dist, engine._ddp, engine.options = single, None, no_gather
        try:
            engine.forward_backward(batch)
        finally:
            engine.dist, engine._ddp, engine.options = ctx, ddp, opts

    def bare() -> None:
        x = to_device(batch.img, engine.device, False)
        with torch.inference_mode():
            engine.teacher.forward_features(x)
        emb, logits = engine.model.forward_features(to_device(batch.img[:, :m],
                                                              engine.device, False))
        engine.optimizer.zero_grad(set_to_none=True)
        (emb.sum() + logits.sum()).backward()

    return {"dist": functools.partial(with_options, gather),
            "no_gather": functools.partial(with_options, no_gather),
            "local": local, "bare": bare}


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    """One rank (started by :func:`torch.multiprocessing.start_processes`): times its share of
    the global batch and writes its medians to ``out_dir/rank<rank>.json``."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    dist.init_process_group(BACKEND, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        engine = _engine(args, False, False, "")  # after the group: the engine wraps DDP
        if engine._ddp is None:
            raise RuntimeError("the engine did not wrap its network in DDP")
        batch = _share(_global_batch(args), rank, world)
        fns = {name: _synced(fn) for name, fn in _step_fns(engine, batch, args.m).items()}
        times = timeit_interleaved(fns, args.reps)
        path = os.path.join(out_dir, f"rank{rank}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump({"rank": rank, "threads": torch.get_num_threads(), **times}, fh)
        os.replace(path + ".tmp", path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


class _Single:
    """The single-process reference: one engine, the whole global batch, ``threads`` threads
    while timing (the caller's count restored after)."""

    def __init__(self, args: argparse.Namespace, threads: int) -> None:
        self.args, self.threads = args, threads
        self.engine = _engine(args, False, False, "")
        self.batch = _global_batch(args)

    def time(self) -> float:
        """Median step time after a warm-up step."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return timeit_interleaved(
                {"single": lambda: self.engine.forward_backward(self.batch)},
                self.args.reps)["single"]
        finally:
            torch.set_num_threads(before)


def _run_ranks(args: argparse.Namespace, world: int) -> List[Dict[str, Any]]:
    """Spawns the ranks and returns their medians in rank order."""
    with tempfile.TemporaryDirectory(prefix="vkd_bench_dist_") as out_dir:
        mp.start_processes(_worker, args=(world, _free_port(), args, out_dir), nprocs=world,
                           join=True, start_method="spawn")
        ranks = []
        for rank in range(world):
            with open(os.path.join(out_dir, f"rank{rank}.json"), encoding="utf-8") as fh:
                ranks.append(json.load(fh))
    return ranks


def bench_dist(args: argparse.Namespace) -> Dict[str, Any]:
    """The step of 2 gloo ranks (one thread each) vs one process with 2 threads, on the same
    global P x K batch; the communication (``comm_s``) and the gathers (``gather_s``) broken
    out. CPU only, whatever the machine has."""
    if args.p % WORLD_SIZE or args.p < 2 * WORLD_SIZE:
        raise ValueError(f"-p {args.p}: the dist bench gives each of its {WORLD_SIZE} ranks "
                         f"P / {WORLD_SIZE} whole identities, and the steps without the gather "
                         "need two per rank (the triplet loss): P must be even and at least "
                         f"{2 * WORLD_SIZE}")
    # The reference before and after the ranks: a drift of the machine's speed between the two
    # phases shows in single_runs_s and half of it enters single_s.
    ref = _Single(args, WORLD_SIZE)
    before = ref.time()
    ranks = _run_ranks(args, WORLD_SIZE)
    after = ref.time()
    # One thread as well: on a shared 2-core machine two OpenMP threads can be far slower
    # than one (each waits at every barrier for the other to be scheduled).
    ref.threads = 1
    single_1 = ref.time()
    del ref
    single = (before + after) / 2
    t = {k: max(r[k] for r in ranks) for k in RANK_KEYS}
    cfg = get_default_config()
    out: Dict[str, Any] = {
        "world_size": WORLD_SIZE, "backend": BACKEND, "global_batch": args.p * args.k,
        "single_s": single, "dist_s": t["dist"], "dist_no_gather_s": t["no_gather"],
        "local_step_s": t["local"], "bare_local_s": t["bare"],
        "comm_s": t["dist"] - t["local"], "gather_s": t["dist"] - t["no_gather"],
        "speedup": single / t["dist"], "single_runs_s": [before, after],
        "single_1thread_s": single_1, "speedup_vs_1thread": single_1 / t["dist"],
        "ranks": [{f"{k}_s": r[k] for k in RANK_KEYS} for r in ranks],
        "config": {"model": args.model, "P": args.p, "K": args.k, "N": args.n, "M": args.m,
                   "height": args.height, "width": args.width, "reps": args.reps,
                   "threads_per_rank": ranks[0]["threads"], "single_threads": WORLD_SIZE,
                   "sync_bn": bool(cfg.train.sync_bn), "device": "cpu"}}
    b = args.p * args.k
    print(f"dist {BACKEND} x{WORLD_SIZE} (1 thread each) vs 1 process x {WORLD_SIZE} threads, "
          f"global batch {b} items ({b // WORLD_SIZE} per rank), {args.model} "
          f"{args.height}x{args.width}, N={args.n} M={args.m}", flush=True)
    rows = [("dist step (gather)", t["dist"]), ("dist step (no gather)", t["no_gather"]),
            ("local step (no comm)", t["local"]), ("bare local compute", t["bare"]),
            ("comm = dist - local", out["comm_s"]),
            ("gather = dist - no gather", out["gather_s"])]
    print(f"dist   {'single process, 2 threads':27s} {single:8.3f} s   (before the ranks "
          f"{before:.3f} s, after {after:.3f} s)", flush=True)
    for name, value in rows:
        print(f"dist   {name:27s} {value:8.3f} s", flush=True)
    print(f"dist   {'single process, 1 thread':27s} {single_1:8.3f} s   (speedup "
          f"{out['speedup_vs_1thread']:.2f}x)", flush=True)
    print(f"dist   {'speedup single / dist':27s} {out['speedup']:8.2f}x   (per-rank dist step: "
          + ", ".join(f"{r['dist']:.3f} s" for r in ranks) + ")", flush=True)
    return out
