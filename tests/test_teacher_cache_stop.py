"""The teacher cache fails early and stops when asked: a folder that cannot be written is one
error line before anything is written, an OS error of the build names the path, a stop request
(SIGINT/SIGTERM) ends the build leaving nothing to reuse and no checkpoint, a second signal
exits at once; the reuse check is cheap unless ``vkd.teacher_cache_verify full``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vkd_torchreid import cli
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine import teacher_cache as tc
from vkd_torchreid.engine.stopping import REPEAT_SIGNAL_S
from vkd_torchreid.models import build_model
from vkd_torchreid.utils import checkpoint as ckpt_io

from conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def teacher_file(mars_root, tmp_path_factory):
    """A random vkd_resnet18 teacher with the training set's classes, in our format."""
    n = mars_root[1]["train_ids"]
    torch.manual_seed(0)
    model = build_model("vkd_resnet18", n, pretrained=False)
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    ckpt_io.atomic_save({"state_dict": model.state_dict(), "epoch": 1,
                         "meta": {"arch": model.arch, "num_classes": n, "stage": "teacher",
                                  "generation": 0}}, path)
    return path


def _student_argv(root, save, teacher, *extra):
    return ["train", "--config-file", "", "--root", root, "data.save_dir", save,
            "data.height", "32", "data.width", "16", "data.workers", "0", "use_gpu", "False",
            "model.pretrained", "False", "model.name", "vkd_resnet18", "test.batch_size", "8",
            "train.print_freq", "1000", "train.batch_size", "8", "sampler.num_instances", "2",
            "video.seq_len", "4", "train.max_epoch", "1", "vkd.stage", "student",
            "vkd.teacher_checkpoint", teacher, "vkd.teacher_bn", "eval",
            "vkd.teacher_cache", "True", *extra]


def _setup(mars_root, tmp_path):
    cfg = tiny_config(mars_root[0], str(tmp_path / "run"))
    dm = VKDDataManager.from_config(cfg)
    torch.manual_seed(0)
    teacher = build_model("vkd_resnet18", dm.num_train_pids, pretrained=False).eval()
    key = tc.CacheKey(teacher=tc.state_hash(teacher), arch=teacher.arch, last_stride=1,
                      feature_dim=teacher.feature_dim, datasets=tuple(cfg.data.sources),
                      frames=tc.frames_hash(dm.train_tracklets), height=32, width=16,
                      norm_mean=tuple(cfg.data.norm_mean), norm_std=tuple(cfg.data.norm_std),
                      resize=tc.RESIZE_VERSION, flip=True, precision="")

    def build(root, **kwargs):
        return tc.open_or_build(teacher, dm.train_tracklets, key, root, dm.augment,
                                torch.device("cpu"), batch_size=16, **kwargs)

    return build, key


def test_a_cache_folder_that_cannot_be_written_is_one_line_before_anything_is_written(
        mars_root, teacher_file, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cache_dir = str(blocker / "cache")  # cannot be created, even by root
    save = tmp_path / "run"
    code = cli.main(_student_argv(mars_root[0], str(save), teacher_file,
                                  "vkd.teacher_cache_dir", cache_dir))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: the teacher cache cannot be written to ")
    assert cache_dir in lines[0] and "is a file, not a folder" in lines[0]
    assert not save.exists()  # no config.yaml, train.log or event file


def test_an_os_error_of_the_build_names_the_path(mars_root, tmp_path):
    build, key = _setup(mars_root, tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(tc.CacheError, match=rf"build failed: {blocker}.*: Not a directory"):
        build(str(blocker / "cache"))


def test_a_stop_request_ends_the_build_leaving_nothing_to_reuse(mars_root, tmp_path):
    build, key = _setup(mars_root, tmp_path)
    root = str(tmp_path / "cache")
    polls = []

    def stop():
        polls.append(1)
        return len(polls) > 2  # after two batches

    with pytest.raises(tc.BuildInterrupted):
        build(root, stop=stop)
    assert len(polls) == 3
    assert os.listdir(os.path.join(root, key.digest())) == []  # no manifest, no features
    cache = build(root)  # then a whole build, which is reused
    assert tc.MANIFEST_FILE in os.listdir(cache.folder)


def test_reuse_is_checked_cheaply_unless_full(mars_root, tmp_path, monkeypatch):
    build, key = _setup(mars_root, tmp_path)
    hashed = []
    real = tc.file_hash
    monkeypatch.setattr(tc, "file_hash", lambda path: hashed.append(path) or real(path))
    root = str(tmp_path / "cache")
    cache = build(root)
    features = os.path.join(cache.folder, tc.FEATURES_FILE)
    assert hashed == [features]  # the checksum of the manifest, once, after the build
    with open(os.path.join(cache.folder, tc.MANIFEST_FILE), encoding="utf-8") as fh:
        manifest = json.load(fh)
    st = os.stat(features)
    assert (manifest["size"], manifest["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    build(root)
    assert hashed == [features]  # cheap: key, shape, size and mtime only
    build(root, verify="full")
    assert hashed == [features, features]
    # a manifest of an older version (no mtime) is checked by its checksum
    del manifest["mtime_ns"]
    with open(os.path.join(cache.folder, tc.MANIFEST_FILE), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh)
    assert build(root).folder == cache.folder and len(hashed) == 3
    with pytest.raises(ValueError, match="verify='sha'"):
        build(root, verify="sha")


def test_the_verify_key_is_validated(mars_root):
    assert tiny_config(mars_root[0], "unused").vkd.teacher_cache_verify == "cheap"
    assert tiny_config(mars_root[0], "unused", "vkd.teacher_cache_verify",
                       "full").vkd.teacher_cache_verify == "full"
    with pytest.raises(ValueError, match="vkd.teacher_cache_verify"):
        tiny_config(mars_root[0], "unused", "vkd.teacher_cache_verify", "sha")


#: Runs ``vkd-reid train`` in this process with the cache's embedding loop slowed down (each
#: batch prints ``embedding`` then sleeps ``argv[1]`` seconds): a build a signal can arrive in.
SLOW_BUILD = """
import sys, time
sys.path.insert(0, {tests!r})
from vkd_torchreid import cli
from vkd_torchreid.engine import teacher_cache as tc

real, delay = tc.embed_frames, float(sys.argv[1])

def slow_embed(teacher, *args, **kwargs):
    forward = teacher.forward
    def slow(x):
        print("embedding", flush=True)
        time.sleep(delay)
        return forward(x)
    teacher.forward = slow
    try:
        yield from real(teacher, *args, **kwargs)
    finally:
        del teacher.forward

tc.embed_frames = slow_embed
sys.exit(cli.main(sys.argv[2:]))
"""


def _start_slow_build(argv, delay):
    script = SLOW_BUILD.format(tests=os.path.join(REPO, "tests"))
    proc = subprocess.Popen([sys.executable, "-c", script, str(delay), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    for line in proc.stdout:  # torchreid prints its own lines first
        if line.strip() == "embedding":
            return proc
    raise AssertionError(f"the build never started (exit {proc.wait()}): {proc.stderr.read()}")


def _nothing_left(save):
    cache = os.path.join(save, "teacher_cache")
    (folder,) = os.listdir(cache)
    assert os.listdir(os.path.join(cache, folder)) == []  # no manifest, no (partial) features
    assert ckpt_io.find_latest(save) is None  # no checkpoint


@pytest.mark.slow  # two training processes
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_build_stops_it_without_a_checkpoint(mars_root, teacher_file,
                                                                 tmp_path, sig):
    save = str(tmp_path / "run")
    proc = _start_slow_build(_student_argv(mars_root[0], save, teacher_file), 0.3)
    start = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - start < 5, err
    assert f"stopped (signal {int(sig)} during the teacher cache build" in err
    assert "--resume" not in err.splitlines()[-1]  # nothing to resume from
    _nothing_left(save)


@pytest.mark.slow  # a training process
def test_a_second_signal_exits_at_once(mars_root, teacher_file, tmp_path):
    save = str(tmp_path / "run")
    # a batch that takes a minute: the first signal alone would wait for its end
    proc = _start_slow_build(_student_argv(mars_root[0], save, teacher_file), 60)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # the same Ctrl-C again, as torchrun forwards it: no more
    time.sleep(REPEAT_SIGNAL_S + 0.5)
    assert proc.poll() is None  # still in the batch
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - start < 5, err
    assert "again: stopped at once without saving" in err
    _nothing_left(save)
