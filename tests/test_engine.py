"""Engines: the VKD step, the frozen teacher, checkpoints, resume and a short run end to end."""
from __future__ import annotations

import json
import os
import time
import types

import numpy as np
import pytest
import torch

from vkd_torchreid.config import get_default_config
from vkd_torchreid.data.batch import Batch
from vkd_torchreid.engine import DistillOptions, EngineOptions, TeacherEngine, VKDEngine
from vkd_torchreid.engine.build import train
from vkd_torchreid.engine.optim import build_optim
from vkd_torchreid.models import build_model
from vkd_torchreid.utils import checkpoint as ckpt_io

from conftest import tiny_config


def _read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _fake_dm():
    return types.SimpleNamespace(train_loader=[], test_loader={}, sources=[], targets=[])


def _batch(b=8, n=4, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(classes).repeat_interleave(b // classes)
    # identity-dependent images so that the task is learnable
    base = torch.randn(classes, 3, 32, 16, generator=g)
    img = base[pids][:, None].repeat(1, n, 1, 1, 1) + 0.3 * torch.randn(b, n, 3, 32, 16, generator=g)
    return Batch(img=img, pid=pids, camid=torch.zeros(b, dtype=torch.int64))


def _options(**vkd):
    cfg = get_default_config()
    cfg.use_gpu = False
    cfg.vkd.student_frames = 2
    for k, v in vkd.items():
        cfg.vkd[k] = v
    return EngineOptions.from_config(cfg), DistillOptions.from_config(cfg)


def _vkd_engine(teacher_bn="batch", alpha=0.1, beta=1e-4, lr=1e-3, milestones=()):
    torch.manual_seed(0)
    teacher = build_model("vkd_resnet18", 4, loss="triplet", pretrained=False)
    student = build_model("vkd_resnet18", 4, loss="triplet", pretrained=False)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = (torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.5)
             if milestones else None)
    return VKDEngine(_fake_dm(), student, teacher, opt, sched,
                     *_options(alpha=alpha, beta=beta, teacher_bn=teacher_bn))


@pytest.mark.slow  # 30 training steps of two networks
def test_vkd_loss_goes_down_on_a_fixed_batch():
    engine = _vkd_engine()
    engine.set_model_mode("train")
    batch = _batch()
    torch.manual_seed(1)
    losses = []
    for _ in range(30):
        losses.append(engine.forward_backward(batch))
    assert set(losses[0]) == {"loss_ce", "loss_tr", "loss_kd", "loss_dp", "loss"}
    first = np.mean([x["loss"] for x in losses[:3]])
    last = np.mean([x["loss"] for x in losses[-3:]])
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("bn", ["batch", "eval"])
def test_teacher_is_bitwise_frozen_and_not_registered(bn):
    engine = _vkd_engine(teacher_bn=bn)
    before = {k: v.clone() for k, v in engine.teacher.state_dict().items()}
    engine.set_model_mode("train")
    for step in range(3):
        engine.forward_backward(_batch(seed=step))
    after = engine.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in engine.teacher.parameters())
    assert list(engine._models) == ["model"]
    state = engine.checkpoint_state(1, 0.0)
    assert set(state["state_dict"]) == set(engine.model.state_dict())
    opt_params = {id(p) for g in engine.optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in engine.teacher.parameters()}


def test_student_sees_m_of_the_teachers_frames():
    engine = _vkd_engine()
    seen = {}

    def spy(name, model):
        orig = model.forward_features

        def wrapped(x):
            seen[name] = x.detach().clone()
            return orig(x)
        model.forward_features = wrapped

    spy("teacher", engine.teacher)
    spy("student", engine.model)
    engine.set_model_mode("train")
    engine.forward_backward(_batch())
    t, s = seen["teacher"], seen["student"]
    assert t.shape[:2] == (8, 4) and s.shape[:2] == (8, 2)
    for i in range(8):  # every student frame is one of the same item's teacher frames
        for j in range(2):
            assert any(torch.equal(s[i, j], t[i, k]) for k in range(4))
        assert not torch.equal(s[i, 0], s[i, 1])


def test_nan_loss_stops_without_update():
    engine = _vkd_engine()
    engine.set_model_mode("train")
    before = {k: v.clone() for k, v in engine.model.named_parameters()}
    batch = _batch()
    batch.img[0, 0, 0, 0, 0] = float("nan")
    from vkd_torchreid.engine import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"loss_\w+=nan.*step 1"):
        engine.forward_backward(batch)
    after = dict(engine.model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_is_weights_only_and_atomic(tmp_path, monkeypatch):
    engine = _vkd_engine(milestones=(2, 4))
    np.random.seed(3)
    path = str(tmp_path / "ck.pth")
    ckpt_io.atomic_save(engine.checkpoint_state(3, np.float32(0.5)), path)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3 and isinstance(state["rank1"], float)
    assert {"state_dict", "optimizer", "scheduler", "rng"} <= set(state)
    # a failing write leaves the previous checkpoint untouched and names the file
    with open(path, "rb") as fh:
        good = fh.read()

    def broken_save(obj, fh, *a, **k):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(ckpt_io.CheckpointError, match="ck.pth.*No space left"):
        ckpt_io.atomic_save(engine.checkpoint_state(4, 0.0), path)
    with open(path, "rb") as fh:
        assert fh.read() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]


def test_resume_restores_everything(tmp_path):
    engine = _vkd_engine(milestones=(1, 2))
    engine.set_model_mode("train")
    engine.forward_backward(_batch())
    engine.scheduler.step()
    np.random.seed(7)
    torch.manual_seed(7)
    path = str(tmp_path / "ck.pth")
    ckpt_io.atomic_save(engine.checkpoint_state(5, 0.1), path)
    expected = (np.random.rand(), torch.rand(1).item())
    other = _vkd_engine(milestones=(1, 2))
    assert other.resume(path) == 5
    assert (np.random.rand(), torch.rand(1).item()) == expected
    for k, v in engine.model.state_dict().items():
        assert torch.equal(v, other.model.state_dict()[k])
    assert other.scheduler.last_epoch == 1 and other.optimizer.param_groups[0]["lr"] == 5e-4
    other.scheduler.step()  # the restored milestones still work
    assert other.optimizer.param_groups[0]["lr"] == 2.5e-4


@pytest.mark.slow  # trains a teacher and a student on a dataset
def test_short_teacher_then_vkd_run(mars_root, tmp_path):
    root, _ = mars_root
    tdir = str(tmp_path / "teacher")
    tcfg = tiny_config(root, tdir, "train.max_epoch", "2", "vkd.stage", "teacher")
    out = train(tcfg)
    assert isinstance(out.engine, TeacherEngine)
    latest = os.path.join(tdir, "model", ckpt_io.LATEST_NAME)
    final = os.path.join(tdir, "model", ckpt_io.CHECKPOINT_PREFIX + "2")
    for p in (latest, final):
        state = torch.load(p, weights_only=True)
        assert state["epoch"] == 2 and state["meta"]["stage"] == "teacher"
    res = _read_json(os.path.join(tdir, "results.json"))
    assert res["stage"] == "teacher" and res["epoch"] == 2
    for mode in ("I2V", "V2V"):
        m = res["vkd_mars"][mode]
        assert set(m) >= {"rank1", "rank5", "rank10", "rank20", "mAP", "mAP_mars"}
        assert 0 <= m["mAP"] <= 1 and m["rank1"] <= m["rank5"] <= m["rank20"]

    sdir = str(tmp_path / "student")
    scfg = tiny_config(root, sdir, "train.max_epoch", "1", "vkd.stage", "student",
                       "vkd.teacher_checkpoint", final)
    out = train(scfg)
    assert isinstance(out.engine, VKDEngine)
    state = torch.load(os.path.join(sdir, "model", ckpt_io.LATEST_NAME), weights_only=True)
    assert state["meta"]["stage"] == "student"
    assert not any(k.startswith("teacher") for k in state["state_dict"])
    res = _read_json(os.path.join(sdir, "results.json"))
    assert res["stage"] == "student" and {"I2V", "V2V"} <= set(res["vkd_mars"])
    # the teacher weights on disk are those the student was distilled from
    teacher_state = torch.load(final, weights_only=True)["state_dict"]
    for k, v in out.engine.teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k])


@pytest.mark.slow  # trains a teacher and two generations
def test_generations_decay_the_learning_rate(mars_root, tmp_path):
    root, _ = mars_root
    tdir = str(tmp_path / "t")
    train(tiny_config(root, tdir, "train.max_epoch", "1"))
    sdir = str(tmp_path / "s")
    cfg = tiny_config(root, sdir, "train.max_epoch", "1", "vkd.stage", "student",
                      "vkd.generations", "2", "vkd.teacher_checkpoint",
                      os.path.join(tdir, "model", ckpt_io.LATEST_NAME), "train.lr", "0.001")
    out = train(cfg)
    assert out.engine.generation == 1
    assert out.engine.optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-4)
    for g in (1, 2):
        assert os.path.isfile(os.path.join(sdir, f"gen{g}", "results.json"))


def test_build_optim_uses_torchreid(mars_root):
    model = build_model("vkd_resnet18", 3, loss="triplet", pretrained=False)
    cfg = tiny_config(mars_root[0], "unused")
    opt, sched = build_optim(cfg, model)
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-4
    assert isinstance(sched, torch.optim.lr_scheduler.MultiStepLR)


def _save_network(model, path):
    ckpt_io.atomic_save({"state_dict": model.state_dict(), "epoch": 1,
                         "meta": {"stage": "teacher", "arch": model.arch,
                                  "num_classes": model.num_classes}}, path)
    return path


def test_cross_distilled_student_starts_from_its_own_stage1(mars_root, tmp_path):
    """r34 teacher -> r18 student: layers 1-3 are the student's stage-1 weights, layer4 and
    the classifier are re-initialised, the teacher is the teacher's checkpoint."""
    from vkd_torchreid.engine.build import build_engine

    root, counts = mars_root
    n = counts["train_ids"]
    torch.manual_seed(1)
    teacher = build_model("vkd_resnet34", n, loss="triplet", pretrained=False)
    torch.manual_seed(2)
    stage1 = build_model("vkd_resnet18", n, loss="triplet", pretrained=False)
    with torch.no_grad():  # trained-looking head: not the freshly initialised values
        stage1.bnneck.weight.fill_(3.0)
        stage1.bnneck.running_mean.fill_(0.5)
    t_path = _save_network(teacher, str(tmp_path / "teacher.pth"))
    s_path = _save_network(stage1, str(tmp_path / "stage1.pth"))
    cfg = tiny_config(root, str(tmp_path / "run"), "vkd.stage", "student",
                      "vkd.teacher_checkpoint", t_path, "vkd.teacher_arch", "vkd_resnet34",
                      "vkd.student_checkpoint", s_path)
    engine = build_engine(cfg)
    student, own = engine.model.state_dict(), stage1.state_dict()
    assert engine.model.arch == "vkd_resnet18" and engine.teacher.arch == "vkd_resnet34"
    early = [k for k in own if k.startswith(("backbone.conv1", "backbone.bn1",
                                             "backbone.layer1", "backbone.layer2",
                                             "backbone.layer3"))]
    assert early and all(torch.equal(student[k], own[k]) for k in early)
    layer4 = [k for k in own if k.startswith("backbone.layer4") and own[k].dim() == 4]  # convs
    assert layer4 and all(not torch.equal(student[k], own[k]) for k in layer4)
    assert torch.equal(student["bnneck.weight"], torch.ones_like(own["bnneck.weight"]))
    assert torch.equal(student["bnneck.running_mean"], torch.zeros_like(own["bnneck.running_mean"]))
    assert not torch.equal(student["classifier.weight"], own["classifier.weight"])
    for k, v in engine.teacher.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, teacher.state_dict()[k])


def test_cross_distillation_without_student_checkpoint_warns(mars_root, tmp_path, caplog):
    from vkd_torchreid.engine.build import build_engine

    root, counts = mars_root
    teacher = build_model("vkd_resnet34", counts["train_ids"], loss="triplet", pretrained=False)
    t_path = _save_network(teacher, str(tmp_path / "teacher.pth"))
    cfg = tiny_config(root, str(tmp_path / "run"), "vkd.stage", "student",
                      "vkd.teacher_checkpoint", t_path)
    with caplog.at_level("WARNING"):
        engine = build_engine(cfg)
    assert engine.model.arch == "vkd_resnet18"  # model.name; the teacher's arch is its file's
    assert engine.teacher.arch == "vkd_resnet34"
    assert any("not from its own stage-1 model" in r.getMessage() for r in caplog.records)


def test_control_never_runs_the_teacher(mars_root):
    engine = _vkd_engine(alpha=0.0, beta=0.0)

    def boom(*args, **kwargs):
        raise AssertionError("the teacher ran")

    engine.teacher.forward_features = boom
    losses = engine.forward_backward(_batch())
    assert set(losses) == {"loss_ce", "loss_tr", "loss"}
    assert losses["loss"] == pytest.approx(losses["loss_ce"] + losses["loss_tr"], rel=1e-6)


def test_generation_lr_has_the_reference_floor(mars_root):
    from vkd_torchreid.engine.build import generation_lr

    cfg = tiny_config(mars_root[0], "unused", "train.lr", "0.0001")
    assert [generation_lr(cfg, g) for g in range(4)] == pytest.approx([1e-4, 1e-5, 1e-5, 1e-5])
    cfg = tiny_config(mars_root[0], "unused", "train.lr", "0.01")
    assert [generation_lr(cfg, g) for g in range(4)] == pytest.approx([1e-2, 1e-3, 1e-4, 1e-5])


def _epoch_rows(root, save, *opts):
    from vkd_torchreid.engine.build import build_engine

    engine = build_engine(tiny_config(root, save, "train.max_epoch", "1", *opts))
    engine.run(save, max_epoch=1)
    with open(os.path.join(save, "losses.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_epoch_log_has_wall_time_and_data_wait(mars_root, tmp_path, caplog):
    """A real run: losses.jsonl and the epoch's log line give the epoch's wall time and the
    part of it the steps waited for their batches (torchreid's data_time, summed)."""
    caplog.set_level("INFO", logger="vkd_torchreid")
    (row,) = _epoch_rows(mars_root[0], str(tmp_path / "run"))
    assert row["epoch_s"] > 0 and 0 <= row["data_wait_s"] <= row["epoch_s"]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1:"))
    assert f"{row['epoch_s']:.1f} s, {row['data_wait_s']:.1f} s of it waiting for data" in line


@pytest.mark.slow  # sleeps in the loader on purpose
def test_data_wait_grows_with_a_slow_dataset(mars_root, tmp_path, monkeypatch):
    from vkd_torchreid.data.frames import TrainFrames

    delay = 0.05
    (fast,) = _epoch_rows(mars_root[0], str(tmp_path / "fast"))
    original = TrainFrames.__getitem__

    def slow(self, item):
        time.sleep(delay)
        return original(self, item)

    monkeypatch.setattr(TrainFrames, "__getitem__", slow)
    (row,) = _epoch_rows(mars_root[0], str(tmp_path / "slow"))
    items = row["steps"] * 8  # train.batch_size 8, data.workers 0: read in this process
    assert row["data_wait_s"] >= items * delay
    assert row["data_wait_s"] - fast["data_wait_s"] >= 0.8 * items * delay
    assert row["data_wait_s"] <= row["epoch_s"]
