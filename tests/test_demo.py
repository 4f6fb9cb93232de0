"""The CPU demo end to end (tiny sizes) and its early-stopping rule."""
from __future__ import annotations

import glob
import json
import os
import types

import torch

from vkd_torchreid import cli, demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DEMO = [
    "data.height", "32", "data.width", "16", "data.workers", "0", "model.name", "vkd_resnet18",
    "train.batch_size", "8", "sampler.num_instances", "2", "video.seq_len", "4",
    "test.batch_size", "8", "train.stepsize", "[1]", "train.amp", "", "test.amp", "",
    "demo.ids", "12", "demo.cams", "2", "demo.tracklets", "1", "demo.frames", "4",
    "demo.teacher_max_epoch", "3", "demo.val_every", "1", "demo.patience", "1",
    "demo.student_epoch", "1", "demo.student_stepsize", "[]", "demo.control", "True",
]


def test_demo_runs_twice_into_fresh_run_dirs(tmp_path, capsys):
    argv = ["--config-file", os.path.join(REPO, "configs", "demo.yaml"),
            "data.root", str(tmp_path / "data"), "data.save_dir", str(tmp_path / "log"),
            *TINY_DEMO]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| teacher |" in out and "| student |" in out and "| teacher_control |" in out
    assert os.path.isdir(tmp_path / "data" / "mars")
    assert os.path.isdir(tmp_path / "data" / "validation" / "mars")
    assert cli.main(argv) == 0  # a second run: existing data reused, a new run folder
    runs = sorted(glob.glob(str(tmp_path / "log" / "run-*")))
    assert len(runs) == 2
    with open(os.path.join(runs[0], "results.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    assert set(summary["table"]) == {"teacher", "student", "teacher_control"}
    for row in summary["table"].values():
        assert set(row) == {"I2V", "V2V"} and 0 <= row["I2V"]["mAP"] <= 1
    assert os.path.isfile(os.path.join(runs[0], "results.png"))
    for name in ("teacher", "student", "teacher_control"):
        with open(os.path.join(runs[0], name, "results.json"), encoding="utf-8") as fh:
            assert {"I2V", "V2V"} <= set(json.load(fh)["vkd_mars"])
    assert 1 <= summary["teacher_selected"]["epoch"] <= 3


class _FakeEngine:
    """Just enough of an engine for ``train_epochs``: a scalar model, no data."""

    stage = "teacher"

    def __init__(self):
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.completed_epochs = 0
        self.epoch = 0

    def train(self, print_freq=10):
        with torch.no_grad():
            self.model.weight.fill_(float(self.epoch + 1))
        self.completed_epochs = self.epoch + 1


def test_early_stopping_keeps_the_best_and_waits_for_the_last_lr_drop(monkeypatch):
    curve = {1: 0.10, 2: 0.30, 3: 0.305, 4: 0.29, 5: 0.30, 6: 0.308, 7: 0.30, 8: 0.30}
    monkeypatch.setattr(demo, "_validate", lambda engine, dm: curve[engine.epoch + 1])
    engine = _FakeEngine()
    info, seen = demo.train_epochs(engine, 8, types.SimpleNamespace(), 1, 2, 10,
                                   min_delta=0.01, min_epochs=0)
    # 0.305 and 0.29 are not 1 point above 0.30: stops at epoch 4, keeps epoch 3 (the best)
    assert [e for e, _ in seen] == [1, 2, 3, 4] and info["plateau_reached"]
    assert info["epoch"] == 3 and engine.model.weight.item() == 3.0
    engine = _FakeEngine()
    info, seen = demo.train_epochs(engine, 8, types.SimpleNamespace(), 1, 2, 10,
                                   min_delta=0.01, min_epochs=5)
    # before epoch 5 (the last lr drop) nothing counts; 6 (0.308, the new best) and 7 are not
    # 1 point above 0.30: stop at 7
    assert [e for e, _ in seen][-1] == 7 and info["epoch"] == 6
    engine = _FakeEngine()
    info, _ = demo.train_epochs(engine, 3, types.SimpleNamespace(), 1, 5, 10, min_delta=0.01)
    assert not info["plateau_reached"] and info["epoch"] == 3
