"""The distributed step benchmark: 2 spawned gloo ranks and the single-process reference, at
tiny sizes (P = 4: the steps without the gather need two identities per rank)."""
from __future__ import annotations

import math

import pytest

from vkd_torchreid.apps.benchmark import BENCHES, build_parser
from vkd_torchreid.apps.benchmark.dist import bench_dist

TINY = ["dist", "--model", "vkd_resnet18", "--height", "32", "--width", "16", "-p", "4", "-k",
        "2", "-n", "4", "-m", "2", "--reps", "1"]


@pytest.mark.slow  # spawns two processes that import torch and build four networks
def test_dist_bench_reports_finite_positive_times():
    assert BENCHES["dist"] is bench_dist
    out = bench_dist(build_parser().parse_args(TINY))
    assert {"world_size", "backend", "global_batch", "single_s", "dist_s", "dist_no_gather_s",
            "local_step_s", "bare_local_s", "comm_s", "gather_s", "speedup", "ranks",
            "config"} <= set(out)
    assert (out["world_size"], out["backend"], out["global_batch"]) == (2, "gloo", 8)
    for key in ("single_s", "dist_s", "dist_no_gather_s", "local_step_s", "bare_local_s",
                "speedup", "single_1thread_s", "speedup_vs_1thread"):
        assert math.isfinite(out[key]) and out[key] > 0, (key, out[key])
    for key in ("comm_s", "gather_s"):  # differences of medians: finite, any sign
        assert math.isfinite(out[key]), (key, out[key])
    assert len(out["ranks"]) == 2
    for rank in out["ranks"]:
        assert all(math.isfinite(v) and v > 0 for v in rank.values()), rank
    assert out["config"]["threads_per_rank"] == 1
    assert out["config"]["model"] == "vkd_resnet18"


@pytest.mark.parametrize("p", ["2", "5"])
def test_dist_bench_needs_an_even_p_of_at_least_4(p):
    with pytest.raises(ValueError, match="P must be even and at least 4"):
        bench_dist(build_parser().parse_args([*TINY, "-p", p]))
