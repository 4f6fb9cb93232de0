"""Timing helpers and the machine record of the benchmarks."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, Mapping

import torch

from vkd_torchreid import __version__


def timeit(fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timeit_interleaved(fns: Mapping[str, Callable[[], Any]], reps: int,
                       warmup: int = 1) -> Dict[str, float]:
    """Median wall time of each function, run in turn (A B C A B C ...).

    On a shared 2-core machine the speed drifts by 10-15 % over a minute; timing A's runs
    and then B's puts that drift into the A/B ratio. Interleaving spreads it over both.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, list] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def machine() -> Dict[str, Any]:
    return {"cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "vkd_torchreid": __version__}
