"""The command line and its reliability: every fault is provoked for real.

Kill/resume and SIGTERM use a real subprocess and real signals; corrupt frames are real
broken JPEG files; checkpoint write failures are injected into the write itself (our machines
run as root, so file permissions would not stop a write).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from vkd_torchreid import cli
from vkd_torchreid import losses as L
from vkd_torchreid.data import clear_cache
from vkd_torchreid.models import build_model
from vkd_torchreid.utils import checkpoint as ckpt_io

from conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "tools", "main.py")


def _opts(root, save_dir, *extra):
    return ["--root", root, "data.save_dir", save_dir, *TINY, "train.batch_size", "8",
            "sampler.num_instances", "2", "video.seq_len", "4", "test.eval_freq", "-1", *extra]


def _run(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _losses(save_dir):
    with open(os.path.join(save_dir, "losses.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {r["epoch"]: r for r in rows}  # a resumed run rewrites later epochs: keep the last


@pytest.fixture(scope="module")
def teacher_ckpt(mars_root, tmp_path_factory):
    """A teacher checkpoint trained for one epoch on the session's synthetic MARS (a real run
    folder: optimizer, scheduler and RNG state, losses.jsonl). Tests using it are slow."""
    save = str(tmp_path_factory.mktemp("teacher"))
    assert cli.main(_opts(mars_root[0], save, "train.max_epoch", "1")) == 0
    return os.path.join(save, "model", ckpt_io.LATEST_NAME)


@pytest.fixture(scope="module")
def random_teacher_ckpt(mars_root, tmp_path_factory):
    """A teacher checkpoint in our format without any training: a randomly initialised
    vkd_resnet18 with the training set's classes, saved as ``<run>/model/latest.pth.tar``
    (what the checks of paths, architectures and class counts read). Do not modify it."""
    torch.manual_seed(0)
    model = build_model("vkd_resnet18", mars_root[1]["train_ids"], pretrained=False)
    path = os.path.join(str(tmp_path_factory.mktemp("random_teacher")), "model",
                        ckpt_io.LATEST_NAME)
    os.makedirs(os.path.dirname(path))
    ckpt_io.atomic_save({"state_dict": model.state_dict(), "epoch": 1,
                         "meta": {"arch": model.arch, "num_classes": model.num_classes,
                                  "stage": "teacher", "generation": 0}}, path)
    return path


# ----------------------------------------------------------------------------- user errors

def test_missing_dataset_root_is_one_line(capsys, tmp_path):
    missing = str(tmp_path / "no_such_root")
    code, err = _run(capsys, _opts(missing, str(tmp_path / "log")))
    assert code == cli.EXIT_ERROR
    assert len(err) == 1 and err[0].startswith("error:") and missing in err[0]


def test_missing_teacher_checkpoint_is_one_line(capsys, mars_root, tmp_path):
    missing = str(tmp_path / "teacher.pth")
    code, err = _run(capsys, _opts(mars_root[0], str(tmp_path / "log"), "vkd.stage", "student",
                                   "vkd.teacher_checkpoint", missing))
    assert code == cli.EXIT_ERROR and len(err) == 1 and missing in err[0]


@pytest.mark.parametrize("opts, needle", [
    (["train.no_such_key", "1"], "train.no_such_key"),
    (["vkd.student_frames", "0"], "vkd.student_frames"),
    (["vkd.stage", "student", "vkd.teacher_checkpoint", "t.pth", "vkd.student_frames", "4"],
     "vkd.student_frames"),
    (["train.lr", "-1"], "train.lr"),
    (["vkd.view_strategy", "sideways"], "vkd.view_strategy"),
])
def test_bad_config_is_one_line_naming_the_key(capsys, mars_root, tmp_path, opts, needle):
    code, err = _run(capsys, _opts(mars_root[0], str(tmp_path / "log"), *opts))
    assert code == cli.EXIT_ERROR and len(err) == 1 and needle in err[0]


def test_refuses_to_overwrite_a_run(capsys, mars_root, random_teacher_ckpt):
    save_dir = os.path.dirname(os.path.dirname(random_teacher_ckpt))
    with open(random_teacher_ckpt, "rb") as fh:
        before = fh.read()
    files_before = sorted(os.listdir(save_dir))
    code, err = _run(capsys, _opts(mars_root[0], save_dir, "train.max_epoch", "1"))
    assert code == cli.EXIT_ERROR and len(err) == 1
    assert "--resume" in err[0] and "--overwrite" in err[0] and save_dir in err[0]
    with open(random_teacher_ckpt, "rb") as fh:
        assert fh.read() == before
    assert sorted(os.listdir(save_dir)) == files_before  # no log, no results written


def test_resume_without_checkpoint_says_so(capsys, mars_root, tmp_path):
    code, err = _run(capsys, ["--resume", *_opts(mars_root[0], str(tmp_path / "empty"))])
    assert code == cli.EXIT_ERROR and "no checkpoint" in err[0]


# ----------------------------------------------------------------------------- checkpoints

def test_wrong_teacher_names_both_sides(capsys, mars_root, random_teacher_ckpt, tmp_path):
    teacher_ckpt = random_teacher_ckpt
    code, err = _run(capsys, _opts(mars_root[0], str(tmp_path / "s"), "vkd.stage", "student",
                                   "vkd.teacher_checkpoint", teacher_ckpt,
                                   "vkd.teacher_arch", "vkd_resnet34"))
    assert code == cli.EXIT_ERROR and len(err) == 1
    assert teacher_ckpt in err[0] and "vkd_resnet34" in err[0]
    # a teacher trained on other identities: the class counts are named
    state = torch.load(teacher_ckpt, weights_only=True)
    w = state["state_dict"]["classifier.weight"]
    state["state_dict"]["classifier.weight"] = torch.cat([w, w[:3]])
    other = str(tmp_path / "other_classes.pth")
    torch.save(state, other)
    code, err = _run(capsys, _opts(mars_root[0], str(tmp_path / "s2"), "vkd.stage", "student",
                                   "vkd.teacher_checkpoint", other))
    n = w.shape[0]
    assert code == cli.EXIT_ERROR and other in err[0]
    assert str(n) in err[0] and str(n + 3) in err[0]


def test_bad_student_checkpoint_is_one_line_and_writes_nothing(capsys, mars_root,
                                                              random_teacher_ckpt, tmp_path):
    """Missing file, another architecture, another class count: one line naming the path and
    both values, raised when the models are built, before anything is written."""
    teacher_ckpt = random_teacher_ckpt
    state = torch.load(teacher_ckpt, weights_only=True)  # a vkd_resnet18 stage-1 model
    n = state["state_dict"]["classifier.weight"].shape[0]
    other_arch = dict(state, meta=dict(state["meta"], arch="vkd_resnet34"))
    other_classes = dict(state, state_dict=dict(state["state_dict"]))
    w = other_classes["state_dict"]["classifier.weight"]
    other_classes["state_dict"]["classifier.weight"] = torch.cat([w, w[:2]])
    cases = {"missing": (str(tmp_path / "none.pth"), ["not found"]),
             "arch": (str(tmp_path / "arch.pth"), ["vkd_resnet34", "vkd_resnet18"]),
             "classes": (str(tmp_path / "classes.pth"), [str(n + 2), str(n)])}
    torch.save(other_arch, cases["arch"][0])
    torch.save(other_classes, cases["classes"][0])
    for name, (path, needles) in cases.items():
        save_dir = str(tmp_path / f"run_{name}")
        code, err = _run(capsys, _opts(mars_root[0], save_dir, "vkd.stage", "student",
                                       "vkd.teacher_checkpoint", teacher_ckpt,
                                       "vkd.student_checkpoint", path))
        assert code == cli.EXIT_ERROR and len(err) == 1, (name, err)
        assert path in err[0] and "vkd.student_checkpoint" in err[0], err[0]
        assert all(x in err[0] for x in needles), err[0]
        assert not os.path.exists(save_dir), f"{name}: the run wrote into its save dir"


def test_config_accepts_a_student_checkpoint_that_does_not_exist_yet(mars_root, tmp_path):
    from vkd_torchreid.config import build_config

    later = str(tmp_path / "later.pth")
    cfg = build_config("", ["vkd.stage", "student", "vkd.teacher_checkpoint", "t.pth",
                            "vkd.student_checkpoint", later])
    assert cfg.vkd.student_checkpoint == later and not os.path.exists(later)


class _Legacy:  # a pickled object that weights_only loading refuses
    pass


@pytest.mark.slow  # trains a teacher (fixture), then a student for an epoch
def test_legacy_checkpoint_needs_trust(capsys, mars_root, teacher_ckpt, tmp_path):
    state = torch.load(teacher_ckpt, weights_only=True)
    state["extra"] = _Legacy()
    legacy = str(tmp_path / "legacy.pth")
    torch.save(state, legacy)
    opts = _opts(mars_root[0], str(tmp_path / "s"), "vkd.stage", "student",
                 "vkd.teacher_checkpoint", legacy, "train.max_epoch", "1")
    code, err = _run(capsys, opts)
    assert code == cli.EXIT_ERROR and "--trust-checkpoint" in err[0] and legacy in err[0]
    assert cli.main(["--trust-checkpoint", *opts]) == 0


@pytest.mark.slow  # a trained run folder, resumed for an epoch
def test_failed_checkpoint_write_keeps_the_previous_one(capsys, mars_root, teacher_ckpt,
                                                        tmp_path, monkeypatch):
    save_dir = str(tmp_path / "run")
    shutil.copytree(os.path.dirname(os.path.dirname(teacher_ckpt)), save_dir)
    latest = os.path.join(save_dir, "model", ckpt_io.LATEST_NAME)
    with open(latest, "rb") as fh:
        good = fh.read()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the bytes reach the file, then the disk fails
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(torch, "save", failing_save)
    code, err = _run(capsys, ["--resume", *_opts(mars_root[0], save_dir, "train.max_epoch", "2")])
    assert code == cli.EXIT_ERROR and len(err) == 1
    assert "could not write checkpoint" in err[0] and "Input/output error" in err[0]
    with open(latest, "rb") as fh:
        assert fh.read() == good
    assert not [f for f in os.listdir(os.path.dirname(latest)) if f.startswith(".tmp-")]


# ----------------------------------------------------------------------------- bad numbers

@pytest.mark.slow  # a trained run folder, resumed
def test_nan_loss_stops_and_keeps_last_good_checkpoint(capsys, mars_root, teacher_ckpt,
                                                       tmp_path, monkeypatch):
    save_dir = str(tmp_path / "run")
    shutil.copytree(os.path.dirname(os.path.dirname(teacher_ckpt)), save_dir)
    latest = os.path.join(save_dir, "model", ckpt_io.LATEST_NAME)
    files_before = sorted(os.listdir(os.path.dirname(latest)))
    real = L.triplet_loss

    def poisoned(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(L, "triplet_loss", poisoned)
    code, err = _run(capsys, ["--resume", *_opts(mars_root[0], save_dir, "train.max_epoch", "3")])
    assert code == cli.EXIT_ERROR and len(err) == 1
    assert "loss_tr=nan" in err[0] and "step" in err[0]
    state = torch.load(latest, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert sorted(os.listdir(os.path.dirname(latest))) == files_before  # no new checkpoint


# ----------------------------------------------------------------------------- bad frames

@pytest.fixture()
def corrupt_root(tmp_path):
    """A small synthetic MARS with one training frame truncated (a real broken JPEG)."""
    from vkd_torchreid.synthetic import write_synthetic

    root = str(tmp_path / "data")
    write_synthetic("vkd_mars", root, ids=8, cams=2, tracklets=1, frames=4, seed=3)
    clear_cache()
    train = os.path.join(root, "mars", "bbox_train")
    pid_dir = sorted(os.listdir(train))[0]
    frames = sorted(os.listdir(os.path.join(train, pid_dir)))
    bad = os.path.join(train, pid_dir, frames[0])
    with open(bad, "r+b") as fh:
        fh.truncate(os.path.getsize(bad) // 3)
    return root, bad, [os.path.join(train, pid_dir, f) for f in frames]


def test_corrupt_frame_is_an_error_naming_it(capsys, corrupt_root, tmp_path):
    root, bad, _ = corrupt_root
    code, err = _run(capsys, _opts(root, str(tmp_path / "log"), "train.max_epoch", "2",
                                   "video.seq_len", "4"))
    assert code == cli.EXIT_ERROR and len(err) == 1 and bad in err[0]


@pytest.mark.slow  # trains two epochs
def test_skip_corrupt_replaces_counts_and_reports(caplog, corrupt_root, tmp_path):
    root, bad, _ = corrupt_root
    save_dir = str(tmp_path / "log")
    assert cli.main(_opts(root, save_dir, "train.max_epoch", "2", "data.skip_corrupt",
                          "True")) == 0
    with open(os.path.join(save_dir, cli.LOG_FILE), encoding="utf-8") as fh:
        log = fh.read()
    assert "unreadable frame(s) were replaced" in log and bad in log


def test_identity_without_any_readable_frame_is_an_error(capsys, corrupt_root, tmp_path):
    root, _, frames = corrupt_root
    pid_dir = os.path.dirname(frames[0])
    for f in os.listdir(pid_dir):  # every frame of that identity, on every camera
        with open(os.path.join(pid_dir, f), "wb") as fh:
            fh.write(b"not a jpeg")
    code, err = _run(capsys, _opts(root, str(tmp_path / "log"), "train.max_epoch", "2",
                                   "data.skip_corrupt", "True"))
    assert code == cli.EXIT_ERROR and "every frame" in err[0] and "unreadable" in err[0]


# ----------------------------------------------------------------------------- signals

@pytest.fixture(scope="module")
def signal_root(tmp_path_factory):
    """Enough identities for several batches per epoch."""
    from vkd_torchreid.synthetic import write_synthetic

    root = str(tmp_path_factory.mktemp("signal_data"))
    write_synthetic("vkd_mars", root, ids=24, cams=3, tracklets=1, frames=6, seed=5)
    return root


def _signal_opts(root, save_dir, epochs=3):
    return _opts(root, save_dir, "train.max_epoch", str(epochs), "train.print_freq", "1",
                 "train.batch_size", "4", "data.height", "64", "data.width", "32",
                 "train.seed", "11")


def _start(argv):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, MAIN, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def _run_until(proc, marker, timeout=120.0):
    """Reads the child's output until a line contains ``marker``; returns the output."""
    out, deadline = [], time.time() + timeout
    for line in proc.stdout:
        out.append(line)
        if marker in line:
            return "".join(out)
        if time.time() > deadline:
            break
    proc.kill()
    raise AssertionError(f"never saw {marker!r}:\n{''.join(out)[-3000:]}")


@pytest.mark.slow  # three training subprocesses
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(signal_root, tmp_path):
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    ref = subprocess.run([sys.executable, MAIN, *_signal_opts(signal_root, ref_dir)],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = _start(_signal_opts(signal_root, run_dir))
    _run_until(proc, "epoch: [2/3][2/")  # a batch of epoch 2 is done: mid-epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    latest = os.path.join(run_dir, "model", ckpt_io.LATEST_NAME)
    state = torch.load(latest, weights_only=True)  # intact and loadable
    assert state["epoch"] == 1

    res = subprocess.run([sys.executable, MAIN, "--resume", *_signal_opts(signal_root, run_dir)],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    want, got = _losses(ref_dir), _losses(run_dir)
    assert sorted(got) == [1, 2, 3]
    for epoch in (2, 3):
        for key in ("loss", "loss_ce", "loss_tr"):
            assert math.isclose(got[epoch][key], want[epoch][key], rel_tol=0, abs_tol=1e-6), \
                (epoch, key, got[epoch][key], want[epoch][key])


@pytest.mark.slow  # a training subprocess
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_cleanly_with_a_checkpoint(signal_root, tmp_path, sig):
    run_dir = str(tmp_path / "run")
    proc = _start(_signal_opts(signal_root, run_dir, epochs=50))
    _run_until(proc, "epoch: [2/50][1/")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:]
    assert "resume with --resume" in out
    state = torch.load(os.path.join(run_dir, "model", ckpt_io.LATEST_NAME), weights_only=True)
    assert state["epoch"] >= 1
