"""Ranking of MARS-sized matrices next to torchreid's, and test-time extraction."""
from __future__ import annotations

import argparse
import functools
from typing import Any, Dict

import numpy as np
import torch

from vkd_torchreid.apps.benchmark.common import timeit
from vkd_torchreid.compat import torchreid_evaluate_rank
from vkd_torchreid.evaluation import evaluate_rank
from vkd_torchreid.models import build_model

MARS_SHAPES = {"i2v": (1980, 11310), "v2v_no_query": (1980, 9330)}
TORCHREID_SLICE = 200


# --------------------------------------------------------------------------- eval
def mars_like_matrix(num_q: int, num_g: int, seed: int = 0) -> tuple:
    """A random distance matrix with MARS-like ids/cameras; queries are in the gallery."""
    rng = np.random.RandomState(seed)
    ids = 626
    g_pids = rng.randint(0, ids, size=num_g)
    g_cams = rng.randint(0, 6, size=num_g)
    q_idx = rng.choice(num_g, size=num_q, replace=False)
    distmat = rng.rand(num_q, num_g).astype(np.float32)
    return distmat, g_pids[q_idx], g_pids, g_cams[q_idx], g_cams


def bench_eval(args: argparse.Namespace) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name, (q, g) in MARS_SHAPES.items():
        d, qp, gp, qc, gc = mars_like_matrix(q, g)
        ours = timeit(functools.partial(evaluate_rank, d, qp, gp, qc, gc), args.reps)
        ours_mars = timeit(functools.partial(evaluate_rank, d, qp, gp, qc, gc, ap_mode="mars"),
                           args.reps)
        n = min(TORCHREID_SLICE, q)
        tr = timeit(functools.partial(torchreid_evaluate_rank, d[:n], qp[:n], gp, qc[:n], gc,
                                      use_cython=False), 1, warmup=0) * q / n
        out[name] = {"ours_s": ours, "ours_mars_s": ours_mars, "torchreid_s": tr,
                     "speedup": tr / ours, "shape": [q, g]}
        print(f"eval {name} {q}x{g}: ours {ours:.3f} s, ours (mars AP) {ours_mars:.3f} s, "
              f"torchreid {tr:.1f} s (from {n} queries) -> {tr / ours:.0f}x", flush=True)
    out.update({k: out["i2v"][k] for k in ("ours_s", "ours_mars_s", "torchreid_s", "speedup")})
    return out


# --------------------------------------------------------------------------- extract
def bench_extract(args: argparse.Namespace) -> Dict[str, Any]:
    from vkd_torchreid.engine.extract import extract

    model = build_model(args.model, args.classes, loss="triplet", pretrained=False).eval()
    items = args.extract_items
    imgs = torch.randn(items, args.n, 3, args.height, args.width)
    loader = [{"img": imgs[i:i + 8], "pid": torch.zeros(len(imgs[i:i + 8]), dtype=torch.int64),
               "camid": torch.zeros(len(imgs[i:i + 8]), dtype=torch.int64)}
              for i in range(0, items, 8)]
    out = {}
    for label, cl, amp in (("fp32", False, ""), ("fast", True, "bf16")):
        m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        secs = timeit(lambda m=m, cl=cl, amp=amp: extract(m, loader, torch.device("cpu"), amp, cl),
                      args.reps)
        out[f"{label}_fps"] = items * args.n / secs
        print(f"extract {label}: {out[f'{label}_fps']:.0f} frames/s", flush=True)
    return out
