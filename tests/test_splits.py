"""``vkd-reid splits``: the ten-split evaluation, resumable per split, one table."""
from __future__ import annotations

import json
import os

import pytest

from vkd_torchreid.apps import splits
from vkd_torchreid.synthetic import write_synthetic

from conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(REPO, "configs", "teacher_ilidsvid_r50.yaml")
STUDENT = os.path.join(REPO, "configs", "vkd_ilidsvid_r50.yaml")
#: Tiny runs: a ResNet-18 at 32 x 16, one epoch each, P x K = 2 x 2 items of N = 4 frames.
TINY_SPLITS = [*TINY, "train.max_epoch", "1", "train.batch_size", "4",
               "sampler.num_instances", "2", "video.seq_len", "4", "train.stepsize", "[1]",
               "train.amp", "", "test.amp", ""]


def test_parse_splits():
    assert splits.parse_splits("0-9") == list(range(10))
    assert splits.parse_splits("3") == [3]
    assert splits.parse_splits("0,2,5-7, 2") == [0, 2, 5, 6, 7]
    for bad in ("10", "5-3", "a", "0-10", ""):
        with pytest.raises(ValueError, match="--splits"):
            splits.parse_splits(bad)


def _results(path, i2v, v2v):
    os.makedirs(path, exist_ok=True)
    record = {"stage": "teacher", "epoch": 1, "vkd_ilidsvid": {
        mode: {"rank1": r, "rank5": r + 0.1, "rank10": r + 0.2, "rank20": r + 0.3,
               "mAP": r - 0.1, "mAP_mars": r - 0.1} for mode, r in (("I2V", i2v), ("V2V", v2v))}}
    with open(os.path.join(path, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(record, fh)


def test_summary_is_mean_and_std_over_the_finished_splits(tmp_path):
    out = str(tmp_path)
    _results(splits.run_dir(out, 0, "teacher"), 0.5, 0.6)
    _results(splits.run_dir(out, 3, "teacher"), 0.7, 0.8)
    _results(splits.run_dir(out, 3, "student"), 0.9, 0.9)
    summary = splits.summarize(out, [0, 3, 4])  # split 4 not run yet: left out
    teacher = summary["runs"]["teacher"]
    assert summary["dataset"] == "vkd_ilidsvid" and teacher["splits"] == [0, 3]
    assert teacher["protocols"]["I2V"]["rank1"]["mean"] == pytest.approx(0.6)
    assert teacher["protocols"]["I2V"]["rank1"]["std"] == pytest.approx(0.1414213, abs=1e-6)
    assert teacher["protocols"]["V2V"]["rank20"]["mean"] == pytest.approx(1.0)
    assert teacher["per_split"]["3"]["V2V"]["mAP"] == pytest.approx(0.7)
    student = summary["runs"]["student"]
    assert student["splits"] == [3] and student["protocols"]["I2V"]["mAP"]["std"] == 0.0
    table = splits.format_table(summary)
    assert "| teacher | I2V | 2 | 60.0 ± 14.1 | 70.0 ± 14.1 | 80.0 ± 14.1 | 90.0 ± 14.1 | " \
           "50.0 ± 14.1 |" in table
    assert "| student | 3 | V2V | 90.0 | 100.0 | 110.0 | 120.0 | 80.0 |" in table


def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, capsys):
    data = str(tmp_path / "data")
    write_synthetic("vkd_ilidsvid", data, ids=12, frames=4, height=32, width=16)
    out = str(tmp_path / "out")
    base = ["--config-file", TEACHER, "--out", out, "data.root", data]
    assert splits.main(base[:-2] + ["--splits", "0-10", "data.root", data]) == 2
    assert "--splits" in capsys.readouterr().err
    mat = os.path.join(data, "ilids-vid", "train-test people splits",
                       "train_test_splits_ilidsvid.mat")
    os.remove(mat)
    assert splits.main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: missing file " + mat)
    mars = os.path.join(REPO, "configs", "teacher_mars_r50.yaml")
    assert splits.main(["--config-file", mars, "--out", out, "data.root", data]) == 2
    assert "no train/test splits" in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.mark.slow
def test_two_splits_teacher_and_student_resume(tmp_path):
    data = str(tmp_path / "data")
    write_synthetic("vkd_ilidsvid", data, ids=12, frames=4, height=32, width=16)
    out = str(tmp_path / "out")
    opts = ["data.root", data, *TINY_SPLITS]
    summary = splits.run_splits(TEACHER, STUDENT, [1, 4], out, opts)
    for run in ("teacher", "student"):
        row = summary["runs"][run]
        assert row["splits"] == [1, 4] and set(row["protocols"]) == {"I2V", "V2V"}
        for s in ("1", "4"):
            assert 0.0 <= row["per_split"][s]["I2V"]["rank1"] <= 1.0
    with open(os.path.join(splits.run_dir(out, 4, "student"), "results.json")) as fh:
        assert json.load(fh)["stage"] == "student"
    for s in (1, 4):  # each split's student is distilled from that split's teacher
        teacher_cfg = load_cfg(os.path.join(splits.run_dir(out, s, "teacher"), "config.yaml"))
        student_cfg = load_cfg(os.path.join(splits.run_dir(out, s, "student"), "config.yaml"))
        assert teacher_cfg.data.split_id == student_cfg.data.split_id == s
        assert student_cfg.vkd.teacher_checkpoint == os.path.join(
            splits.run_dir(out, s, "teacher"), "model", "latest.pth.tar")
        assert summary["runs"]["student"]["wall_time_s"]["n"] == 2
    stamps = {p: os.path.getmtime(p) for p in _all_results(out)}
    again = splits.run_splits(TEACHER, STUDENT, [1, 4], out, opts)
    assert {p: os.path.getmtime(p) for p in _all_results(out)} == stamps
    assert again["runs"] == summary["runs"]
    with open(os.path.join(out, "splits.md"), encoding="utf-8") as fh:
        text = fh.read()
    assert "| teacher | I2V | 2 |" in text and "| student | 4 | V2V |" in text
    with open(os.path.join(out, "splits.json"), encoding="utf-8") as fh:
        assert json.load(fh)["runs"]["student"]["splits"] == [1, 4]


def load_cfg(path):
    from yacs.config import CfgNode

    with open(path, encoding="utf-8") as fh:
        return CfgNode.load_cfg(fh)


def _all_results(out):
    return [os.path.join(root, "results.json") for root, _, files in os.walk(out)
            if "results.json" in files]
