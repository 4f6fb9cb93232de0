"""Gallery search: queries/s, build time and peak memory of exact (torch) and faiss search for
galleries of 10k to 1M embeddings (random clustered vectors: speed only; recall is measured
on real embeddings in the tests). 512-d float32 by default: 1M x 2048 x 4 bytes would be 8 GB
per copy on a 24 GB machine."""
from __future__ import annotations

import argparse
import functools
import gc
from typing import Any, Dict, List

import torch

from vkd_torchreid.apps.benchmark.common import timed
from vkd_torchreid.search import GalleryIndex


def _peak_reset() -> None:
    """Resets the process's peak resident size (Linux: ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _vectors(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, n // 20), d, generator=g)
    out = torch.empty(n, d)
    for start in range(0, n, 100_000):  # bounded temporaries
        stop = min(n, start + 100_000)
        ids = torch.randint(0, centres.shape[0], (stop - start,), generator=g)
        out[start:stop] = centres[ids] + 0.5 * torch.randn(stop - start, d, generator=g)
    return out


def bench_search(args: argparse.Namespace) -> Dict[str, Any]:
    try:
        import faiss  # noqa: F401
        backends: List[str] = ["exact", "faiss-flat", "faiss-ivf"]
    except ImportError:
        backends = ["exact"]
    out: Dict[str, Any] = {"dim": args.search_dim, "queries": args.search_queries, "rows": []}
    queries = _vectors(args.search_queries, args.search_dim, 1)
    for n in args.search_sizes:
        gallery = _vectors(n, args.search_dim, 0)
        for backend in backends:
            gc.collect()
            _peak_reset()
            base = _peak_mb()
            index, built = timed(functools.partial(GalleryIndex.build, gallery, backend=backend))
            index.search(queries[:8], 10)  # warm-up
            _, secs = timed(functools.partial(index.search, queries, 10))
            row = {"gallery": n, "backend": backend, "build_s": built,
                   "queries_per_s": args.search_queries / secs,
                   "peak_mb_over_start": _peak_mb() - base}
            out["rows"].append(row)
            print(f"search {n:>9,d} x {args.search_dim}  {backend:10s}  build {built:7.2f} s  "
                  f"{row['queries_per_s']:10.1f} queries/s  peak +{row['peak_mb_over_start']:7.0f}"
                  f" MB", flush=True)
            del index
        del gallery
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--search-sizes", type=lambda t: [int(v) for v in t.split(",")],
                        default=[10_000, 100_000, 1_000_000],
                        help="search: gallery sizes (default 10000,100000,1000000)")
    parser.add_argument("--search-dim", type=int, default=512)
    parser.add_argument("--search-queries", type=int, default=1000)

