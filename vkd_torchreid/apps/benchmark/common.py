"""Timing helpers and the machine record of the benchmarks.

Every benchmark times through :func:`timed`: on a GPU kernels run asynchronously, so a call
returns when its work is queued, not done. :func:`timed` closes every timed call with a
device synchronisation whenever this process uses CUDA, so the seconds are the work's.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, Mapping, Tuple, TypeVar

import torch

from vkd_torchreid import __version__

T = TypeVar("T")


def synchronize() -> None:
    """Waits for the queued CUDA work of this process (nothing without CUDA in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], T]) -> Tuple[T, float]:
    """``fn()`` and its wall seconds, closed by :func:`synchronize` (one per call)."""
    start = time.perf_counter()
    result = fn()
    synchronize()
    return result, time.perf_counter() - start


def timeit(fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``reps`` runs after ``warmup`` runs."""
    synchronize()  # work queued before the first run is not the first run's
    for _ in range(warmup):
        timed(fn)
    return statistics.median(timed(fn)[1] for _ in range(reps))


def timeit_interleaved(fns: Mapping[str, Callable[[], Any]], reps: int,
                       warmup: int = 1) -> Dict[str, float]:
    """Median wall time of each function, run in turn (A B C A B C ...).

    On a shared 2-core machine the speed drifts by 10-15 % over a minute; timing A's runs
    and then B's puts that drift into the A/B ratio. Interleaving spreads it over both.
    """
    synchronize()
    for _ in range(warmup):
        for fn in fns.values():
            timed(fn)
    times: Dict[str, list] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed(fn)[1])
    return {name: statistics.median(t) for name, t in times.items()}


def machine() -> Dict[str, Any]:
    return {"cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "vkd_torchreid": __version__}
