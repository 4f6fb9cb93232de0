"""Timing helpers and the machine record of the benchmarks."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Dict

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


def machine() -> Dict[str, Any]:
    return {"cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "vkd_torchreid": __version__}
