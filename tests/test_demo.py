"""The CPU demo end to end (tiny sizes) and its early-stopping rule."""
from __future__ import annotations

import glob
import json
import os
import types

import numpy as np
import pytest
import torch

from vkd_torchreid import cli
from vkd_torchreid.engine.callbacks import EarlyStopping, Validation

from conftest import TINY_DEMO, has_extra

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_RUN = [*TINY_DEMO, "demo.ids", "12", "demo.teacher_max_epoch", "3", "demo.control", "True"]


@pytest.mark.slow  # the demo end to end, twice
def test_demo_runs_twice_into_fresh_run_dirs(tmp_path, capsys):
    argv = ["--config-file", os.path.join(REPO, "configs", "demo.yaml"),
            "data.root", str(tmp_path / "data"), "data.save_dir", str(tmp_path / "log"),
            *DEMO_RUN]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| teacher |" in out and "| student |" in out and "| teacher_control |" in out
    assert os.path.isdir(tmp_path / "data" / "mars")
    assert os.path.isdir(tmp_path / "data" / "validation" / "mars")
    assert cli.main(argv) == 0  # a second run: existing data reused, a new run folder
    runs = sorted(glob.glob(str(tmp_path / "log" / "run-*")))
    assert len(runs) == 2
    with open(os.path.join(runs[0], "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    with open(os.path.join(runs[1], "summary.json"), encoding="utf-8") as fh:
        again = json.load(fh)
    for key in ("table", "teacher_selected", "teacher_validation_curve"):  # seeded: train.seed
        assert again[key] == summary[key], key
    assert set(summary["table"]) == {"teacher", "student", "teacher_control"}
    for row in summary["table"].values():
        assert set(row) == {"I2V", "V2V"} and 0 <= row["I2V"]["mAP"] <= 1
    assert os.path.isfile(os.path.join(runs[0], "results.png"))
    for name in ("teacher", "student", "teacher_control"):
        with open(os.path.join(runs[0], name, "results.json"), encoding="utf-8") as fh:
            assert {"I2V", "V2V"} <= set(json.load(fh)["vkd_mars"])
    assert 1 <= summary["teacher_selected"]["epoch"] <= 3
    analysis = os.path.join(runs[0], "analysis")
    for name in ("compare.png", "gallery_curve.png", "gallery_curve.json"):
        assert os.path.isfile(os.path.join(analysis, name))
    with open(os.path.join(analysis, "gallery_curve.json"), encoding="utf-8") as fh:
        curve = json.load(fh)
    assert [n["label"] for n in curve["networks"]] == ["teacher", "student", "teacher_control"]
    # the curve's default point is the evaluation's: the student's results.json
    with open(os.path.join(runs[0], "student", "results.json"), encoding="utf-8") as fh:
        i2v = json.load(fh)["vkd_mars"]["I2V"]
    point = next(p for p in curve["networks"][1]["points"] if p["frames"] == 4)  # seq_len 4
    assert point["mAP"] == pytest.approx(i2v["mAP"], abs=1e-6)
    if has_extra("pytorch_grad_cam", "analysis"):
        with open(os.path.join(analysis, "explain.json"), encoding="utf-8") as fh:
            shares = [n["mean_foreground_share"] for n in json.load(fh)["networks"]]
        # None: every map of a network was zero (no positive evidence at 32 x 16 pixels)
        assert len(shares) == 3 and all(s is None or 0 <= s <= 1 for s in shares)
        assert summary["analysis"]["explain"].endswith("explain.png")


class _FakeEngine:
    """Just enough of an engine for the selection callbacks: a scalar model that remembers
    the epoch it was trained to."""

    stage = "teacher"

    def __init__(self):
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.completed_epochs = 0
        self.stop_reason = ""

    def request_stop(self, reason):
        self.stop_reason = reason


def _select(curve, epochs, every=1, patience=2, min_delta=0.01, min_epochs=0):
    """Runs Validation + EarlyStopping as the engine's loop does; returns (stopping info,
    validated epochs, the epoch held by the model at the end)."""
    fake = types.SimpleNamespace(datamanager=types.SimpleNamespace(targets=["t"]))
    fake.evaluate = lambda model: {"t": {"V2V": {"mAP": curve[int(model.weight.item())]}}}
    validation = Validation(fake, every)
    stopping = EarlyStopping(validation, patience, min_delta, min_epochs)
    engine = _FakeEngine()
    for epoch in range(epochs):
        with torch.no_grad():
            engine.model.weight.fill_(float(epoch + 1))
        engine.completed_epochs = epoch + 1
        for callback in (validation, stopping):
            callback.on_epoch_end(engine)
        if engine.stop_reason:
            break
    stopping.on_train_end(engine)
    return stopping.info, [e for e, _ in validation.curve], int(engine.model.weight.item())


def _previous_rule(curve, epochs, every, patience, min_delta, min_epochs):
    """The demo's selection loop before the callbacks, restated: (stop epoch, best epoch)."""
    best, best_epoch, reference, waited = -1.0, None, -1.0, 0
    for epoch in range(1, epochs + 1):
        if epoch % every:
            continue
        m = curve[epoch]
        if m > best:
            best, best_epoch = m, epoch
        if m > reference + min_delta:
            reference, waited = m, 0
        elif epoch > min_epochs:
            waited += 1
            if patience and waited >= patience:
                return epoch, best_epoch
    return None, best_epoch or epochs


def test_early_stopping_keeps_the_best_and_waits_for_the_last_lr_drop():
    curve = {1: 0.10, 2: 0.30, 3: 0.305, 4: 0.29, 5: 0.30, 6: 0.308, 7: 0.30, 8: 0.30}
    info, seen, held = _select(curve, 8)
    # 0.305 and 0.29 are not 1 point above 0.30: stops at epoch 4, keeps epoch 3 (the best)
    assert seen == [1, 2, 3, 4] and info["plateau_reached"]
    assert info["epoch"] == 3 and held == 3
    info, seen, held = _select(curve, 8, min_epochs=5)
    # before epoch 5 (the last lr drop) nothing counts; 6 (0.308, the new best) and 7 are not
    # 1 point above 0.30: stop at 7
    assert seen[-1] == 7 and info["epoch"] == 6 and held == 6
    info, _, held = _select(curve, 3, patience=5)
    assert not info["plateau_reached"] and info["epoch"] == 3 and held == 3


def test_early_stopping_selects_what_the_previous_loop_selected():
    rng = np.random.default_rng(0)
    for trial in range(300):
        epochs, every = int(rng.integers(3, 30)), int(rng.integers(1, 4))
        patience, min_epochs = int(rng.integers(1, 4)), int(rng.integers(0, 10))
        curve = dict(enumerate(np.round(rng.uniform(0, 0.5, epochs + 1), 2).tolist()))
        stop, best = _previous_rule(curve, epochs, every, patience, 0.01, min_epochs)
        info, seen, held = _select(curve, epochs, every, patience, 0.01, min_epochs)
        assert info["plateau_reached"] == (stop is not None), trial
        if stop is not None:
            assert seen[-1] == stop, trial
        assert info["epoch"] == held == (best if seen else epochs), trial
