"""The benchmarks' timing (a CUDA synchronisation closes every timed call), the parallel world
they write, and the step and pipeline benchmarks at tiny sizes."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from vkd_torchreid.apps.benchmark import BENCHES, build_parser, common, main
from vkd_torchreid.apps.benchmark.world import write_world
from vkd_torchreid.data.duke import DukeVideo

TINY = ["--model", "vkd_resnet18", "--height", "32", "--width", "16", "-p", "2", "-k", "2",
        "-n", "4", "-m", "2", "--reps", "1"]


@pytest.fixture
def syncs(monkeypatch):
    """Counts ``torch.cuda.synchronize`` calls; the test says whether CUDA is in use."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append(a))

    def cuda_in_use(flag):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: flag)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: flag)
    return calls, cuda_in_use


def test_every_timed_call_ends_with_one_cuda_synchronisation(syncs):
    calls, cuda_in_use = syncs
    cuda_in_use(True)
    ran = []
    result, seconds = common.timed(lambda: ran.append(len(calls)) or "done")
    assert (result, len(calls), ran) == ("done", 1, [0])  # after the call, not before
    assert seconds >= 0
    calls.clear()
    common.timeit(lambda: None, reps=3, warmup=2)
    assert len(calls) == 1 + 2 + 3  # once before timing starts, then once per call
    calls.clear()
    times = common.timeit_interleaved({"a": lambda: None, "b": lambda: None}, reps=2, warmup=1)
    assert set(times) == {"a", "b"} and len(calls) == 1 + 2 * 1 + 2 * 2


def test_without_cuda_nothing_is_synchronised(syncs):
    calls, cuda_in_use = syncs
    cuda_in_use(False)
    common.timed(lambda: None)
    common.timeit(lambda: None, reps=2)
    common.timeit_interleaved({"a": lambda: None}, reps=2)
    assert calls == []


def test_timed_measures_the_work_not_its_launch(syncs, monkeypatch):
    """A fake asynchronous device: the call returns at once, the work ends at the sync."""
    import time

    calls, cuda_in_use = syncs
    cuda_in_use(True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: time.sleep(0.05))
    _, seconds = common.timed(lambda: None)
    assert seconds >= 0.05


def test_world_is_written_in_parallel_and_parses(tmp_path):
    counts = write_world(str(tmp_path), train_ids=10, height=24, width=12, frames=3,
                         processes=2)
    splits = DukeVideo.parse(str(tmp_path / "DukeMTMC-VideoReID"))
    assert counts == {"train_ids": 10, "test_ids": 2, "images": 12 * 2 * 3}
    assert len({pid for _, pid, _ in splits.train}) == 10 and len(splits.train) == 20
    assert len(splits.query) == len(splits.gallery) == 2
    assert os.listdir(tmp_path) == ["DukeMTMC-VideoReID"]  # the parts are gone
    write_world(str(tmp_path), train_ids=3, height=24, width=12, frames=1)  # rewrites its own
    assert len(DukeVideo.parse(str(tmp_path / "DukeMTMC-VideoReID")).train) == 6
    real = tmp_path / "real"
    (real / "DukeMTMC-VideoReID" / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not written by write_synthetic"):
        write_world(str(real), train_ids=2, height=24, width=12)


@pytest.mark.slow  # the real loader and step
def test_pipeline_reports_sane_figures(tmp_path):
    out = str(tmp_path / "out.json")
    assert main(["pipeline", *TINY, "--steps", "2", "--warmup-steps", "1", "--loader-workers",
                 "0,1", "--decode-device", "cpu", "--json", out]) == 0
    with open(out, encoding="utf-8") as fh:
        result = json.load(fh)["pipeline"]
    assert [(r["decode_device"], r["workers"]) for r in result["rows"]] == [("cpu", 0),
                                                                          ("cpu", 1)]
    for row in result["rows"]:
        assert row["frames_per_s"] > 0 and row["step_s"] > 0 and row["steps"] == 2
        assert 0 <= row["wait_s"] <= row["wall_s"] and 0 <= row["wait_share"] <= 1
        assert row["loader_fps"] > 0 and 0 < row["loader_next_share"] <= 1
        assert math.isclose(row["wait_share"], row["wait_s"] / row["wall_s"])
        assert math.isclose(row["frames_per_s"], 2 * 2 * 2 * 4 / row["wall_s"])
    assert result["world"]["train_ids"] == 2 * 3  # P identities for each of the 3 steps
    assert result["config"]["stage"] == "teacher"


@pytest.mark.slow  # the real loader and step
def test_pipeline_student_stage_and_its_options():
    args = build_parser().parse_args(["pipeline", *TINY, "--steps", "1", "--warmup-steps",
                                      "0", "--loader-workers", "0", "--stage", "student", "--decode-device", "cpu",
                                      "--amp", "bf16", "--channels-last"])
    (row,) = BENCHES["pipeline"](args)["rows"]
    assert row["frames_per_s"] > 0 and 0 <= row["wait_share"] <= 1 and row["loader_fps"] > 0


def test_pipeline_arguments_are_checked():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pipeline", "--decode-device", "gpu"])
    args = build_parser().parse_args(["pipeline", "--decode-device", "cuda", "--cpu"])
    with pytest.raises(ValueError, match="--decode-device cuda needs CUDA"):
        BENCHES["pipeline"](args)


@pytest.mark.slow  # three modes of two networks and a teacher-stage step
def test_step_is_fed_by_the_training_loader():
    out = BENCHES["step"](build_parser().parse_args(["step", *TINY]))
    for mode in ("fp32", "channels_last", "bf16", "teacher_fp32"):
        assert out[mode]["vkd_s"] > 0 and out[mode]["bare_s"] > 0, mode
    assert out["cached_bf16"]["vkd_s"] > 0
    assert out["config"]["fed"] == "training loader"
