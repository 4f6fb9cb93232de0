"""The study tool: a tiny seeded study end to end, resumed without retraining, summarised."""
from __future__ import annotations

import json
import os

import pytest

from vkd_torchreid.apps import study
from vkd_torchreid.apps.demo_config import DEMO_CONFIG
from vkd_torchreid.config import build_config

from conftest import TINY_DEMO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_STUDY = [*TINY_DEMO, "demo.ids", "14", "demo.train_ids", "6",
              "demo.teacher_max_epoch", "2"]


@pytest.mark.slow
def test_study_runs_resumes_and_summarises(tmp_path):
    cfg = build_config(os.path.join(REPO, "configs", "study.yaml"),
                       ["data.root", str(tmp_path / "data"), *TINY_STUDY], [DEMO_CONFIG])
    out = str(tmp_path / "out")
    summary = study.run_study(cfg, out, seeds=[1, 2], variants=["vkd", "control", "vkd_cache"])
    assert set(summary["runs"]) == {"teacher", "vkd", "control", "vkd_cache"}
    assert summary["runs"]["vkd_cache"]["wall_time_s"]["n"] == 2
    assert os.listdir(os.path.join(out, "seed1", "vkd_cache", "teacher_cache"))
    for row in summary["runs"].values():
        assert row["seeds"] == [1, 2]
        values = [row["per_seed"][s]["I2V"]["rank1"] for s in (1, 2)]
        stats = row["I2V_rank1"]
        assert stats["mean"] == pytest.approx(sum(values) / 2)
        assert stats["min"] == min(values) and stats["max"] == max(values)
    with open(os.path.join(out, "seed1", "vkd", "results.json"), encoding="utf-8") as fh:
        assert json.load(fh)["stage"] == "student"
    with open(os.path.join(out, "seed1", "teacher", "selection.json"), encoding="utf-8") as fh:
        assert 1 <= json.load(fh)["selected"]["epoch"] <= 2
    # a second sitting trains nothing again: every results.json stays as it was
    stamps = {p: os.path.getmtime(p) for p in _results(out)}
    again = study.run_study(cfg, out, seeds=[1, 2], variants=["vkd", "control", "vkd_cache"])
    assert {p: os.path.getmtime(p) for p in _results(out)} == stamps
    assert again["runs"]["vkd"]["per_seed"] == summary["runs"]["vkd"]["per_seed"]
    with open(os.path.join(out, "summary.md"), encoding="utf-8") as fh:
        assert "| control | 2 |" in fh.read()
    with pytest.raises(ValueError, match="unknown study variant"):
        study.run_study(cfg, out, seeds=[1], variants=["nope"])


def _results(out):
    return [os.path.join(root, "results.json") for root, _, files in os.walk(out)
            if "results.json" in files]
