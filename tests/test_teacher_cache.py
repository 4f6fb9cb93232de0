"""The teacher-feature cache: targets equal the eval-mode teacher's, keys, rebuilds of bad
caches, an interrupted build never trusted, and a loader that decodes only M frames."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from vkd_torchreid.data.batch import Batch
from vkd_torchreid.data.io import read_image
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.data.sampler import student_pick
from vkd_torchreid.data.transforms import normalize_batch, resize
from vkd_torchreid.engine import teacher_cache as tc
from vkd_torchreid.engine.build import train
from vkd_torchreid.engine.targets import CachedTeacherTargets, CacheRows, LiveTeacherTargets
from vkd_torchreid.models import build_model
from vkd_torchreid.utils import checkpoint as ckpt_io

from conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _teacher(n, seed=0):
    torch.manual_seed(seed)
    model = build_model("vkd_resnet18", n, pretrained=False).eval()
    with torch.no_grad():  # trained-looking BNNeck statistics (not the identity of a fresh BN)
        model.bnneck.running_mean.uniform_(-0.5, 0.5)
        model.bnneck.running_var.uniform_(0.5, 2.0)
        model.bnneck.weight.uniform_(0.5, 1.5)
    return model


def _key(cfg, dm, teacher, flip=True):
    return tc.CacheKey(teacher=tc.state_hash(teacher), arch=teacher.arch,
                       last_stride=teacher.last_stride, feature_dim=teacher.feature_dim,
                       datasets=tuple(cfg.data.sources), frames=tc.frames_hash(dm.train_tracklets),
                       height=cfg.data.height, width=cfg.data.width,
                       norm_mean=tuple(cfg.data.norm_mean), norm_std=tuple(cfg.data.norm_std),
                       resize=tc.RESIZE_VERSION, flip=flip, precision="")


def _build(cfg, dm, teacher, root, flip=True, verify="cheap", stop=None):
    return tc.open_or_build(teacher, dm.train_tracklets, _key(cfg, dm, teacher, flip), root,
                            dm.augment, torch.device("cpu"), verify=verify, stop=stop)


@pytest.fixture()
def setup(mars_root, tmp_path):
    cfg = tiny_config(mars_root[0], str(tmp_path / "run"))
    dm = VKDDataManager.from_config(cfg)
    return cfg, dm, _teacher(dm.num_train_pids), str(tmp_path / "cache")


def _targets(cfg, dm, root, device_copy=False):
    """Cached targets of ``cfg`` with their cache under ``root``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.vkd.teacher_cache_dir, cfg.vkd.teacher_cache_device = root, device_copy
    return CachedTeacherTargets(cfg, dm.train_tracklets)


def test_cached_targets_equal_the_eval_mode_teacher(setup):
    cfg, dm, teacher, root = setup
    targets = _targets(cfg, dm, root)
    targets.prepare(teacher, torch.device("cpu"))  # builds the cache
    assert targets.cache.folder == _build(cfg, dm, teacher, root).folder  # the same key
    assert tc.CacheKey.from_config(cfg, teacher, dm.train_tracklets) == _key(cfg, dm, teacher)
    paths = [t[0] for t in dm.train_tracklets]
    refs = np.array([(0, 0), (1, 3), (2, 1), (0, 5)])  # one item of N = 4 frames
    flips = np.array([False, True, True, False])
    frames = []
    for (t, f), flip in zip(refs, flips):
        img = resize(read_image(paths[t][f]), cfg.data.height, cfg.data.width)
        frames.append(img[:, ::-1] if flip else img)
    x = normalize_batch(torch.from_numpy(np.stack(frames)[None].copy()), cfg.data.norm_mean,
                        cfg.data.norm_std).contiguous()
    rows = torch.from_numpy(targets.rows(refs[:, 0], refs[:, 1], flips)[None])
    batch = Batch(img=x[:, :2], pid=torch.zeros(1, dtype=torch.int64),
                  camid=torch.zeros(1, dtype=torch.int64), teacher_rows=rows)
    with torch.inference_mode():
        emb, logits = LiveTeacherTargets()(teacher, x, batch)
        c_emb, c_logits = targets(teacher, x[:, :2], batch)  # M frames: only the rows count
    feats = targets.gather(rows)  # [1, N, D] float32
    assert torch.equal(c_emb, feats.mean(1))
    scale = emb.abs().max()
    assert torch.allclose(c_emb, emb, atol=2e-3 * scale)  # float16 rounding of the rows
    assert torch.allclose(c_logits, logits, atol=2e-3 * logits.abs().max())
    # In float32 the logits of the mean are exactly the mean of per-frame logits (eval BNNeck
    # and a bias-free classifier are affine): the cache's shortcut loses nothing.
    with torch.inference_mode():
        per_frame = teacher.classifier(teacher.bnneck(feats[0])).mean(0, keepdim=True)
    assert torch.allclose(c_logits, per_frame, atol=1e-5)


def test_rows_follow_tracklet_frame_and_flip(setup):
    cfg, dm, teacher, root = setup
    cache = _build(cfg, dm, teacher, root)
    lengths = [len(t[0]) for t in dm.train_tracklets]
    rows = CacheRows.of(dm.train_tracklets, flip=True)
    assert cache.features.shape == (2 * sum(lengths), teacher.feature_dim)
    assert list(cache.offsets[:3]) == list(rows.offsets[:3]) == \
        [0, lengths[0], lengths[0] + lengths[1]]
    assert rows(np.array([1]), np.array([2]), np.array([True]))[0] == 2 * (lengths[0] + 2) + 1
    # the rows of the build's order: every frame of every tracklet, each followed by its flip
    t = np.repeat(np.arange(len(lengths)), lengths)
    f = np.concatenate([np.arange(n) for n in lengths])
    both = np.stack([rows(t, f, np.zeros_like(f, bool)), rows(t, f, np.ones_like(f, bool))], 1)
    assert np.array_equal(both.reshape(-1), np.arange(2 * sum(lengths)))
    no_flip = _build(cfg, dm, teacher, root, flip=False)
    assert no_flip.folder != cache.folder and no_flip.features.shape[0] == sum(lengths)
    plain = CacheRows.of(dm.train_tracklets, flip=False)
    assert plain(np.array([1]), np.array([2]), np.array([True]))[0] == lengths[0] + 2
    assert np.array_equal(plain(t, f, np.ones_like(f, bool)), np.arange(sum(lengths)))
    # a value: equal functions are equal (they share a loader) and travel to the workers
    assert CacheRows.of(dm.train_tracklets, flip=True) == rows and hash(rows)
    assert dm.train_loader_for(rows) is dm.train_loader_for(CacheRows.of(dm.train_tracklets, True))
    assert dm.train_loader_for(rows).dataset.teacher_rows == rows


def test_reuse_reads_only_and_a_changed_teacher_rebuilds(setup, caplog):
    cfg, dm, teacher, root = setup
    cache = _build(cfg, dm, teacher, root)
    files = [os.path.join(cache.folder, n) for n in (tc.FEATURES_FILE, tc.MANIFEST_FILE)]
    stamps = [os.stat(p).st_mtime_ns for p in files]
    with caplog.at_level(logging.INFO, logger=tc.__name__):
        again = _build(cfg, dm, teacher, root)
    assert again.folder == cache.folder and "teacher cache reused" in caplog.text
    assert [os.stat(p).st_mtime_ns for p in files] == stamps  # nothing rewritten
    other = _teacher(dm.num_train_pids, seed=1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=tc.__name__):
        changed = _build(cfg, dm, other, root)
    assert changed.folder != cache.folder and "must be built" in caplog.text
    assert not np.array_equal(np.asarray(changed.features), np.asarray(cache.features))


@pytest.mark.parametrize("damage,verify", [
    ("flip_a_byte", "cheap"), ("flip_a_byte_keep_mtime", "full"),
    *(pytest.param(d, "cheap", marks=pytest.mark.slow)  # the fast tier keeps the two above
      for d in ("truncate", "manifest_shape", "no_manifest", "manifest_cut"))])
def test_a_damaged_cache_is_rebuilt_not_used(setup, caplog, damage, verify):
    cfg, dm, teacher, root = setup
    cache = _build(cfg, dm, teacher, root)
    good = np.array(cache.features)
    features = os.path.join(cache.folder, tc.FEATURES_FILE)
    manifest = os.path.join(cache.folder, tc.MANIFEST_FILE)
    del cache
    if damage.startswith("flip_a_byte"):
        st = os.stat(features)
        with open(features, "r+b") as fh:
            fh.seek(100)
            byte = fh.read(1)
            fh.seek(100)
            fh.write(bytes([byte[0] ^ 0xFF]))
        if damage == "flip_a_byte_keep_mtime":  # only the checksum sees it
            os.utime(features, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "truncate":
        os.truncate(features, os.path.getsize(features) - 2)
    elif damage == "manifest_shape":
        with open(manifest, encoding="utf-8") as fh:
            m = json.load(fh)
        m["shape"][0] += 2
        with open(manifest, "w", encoding="utf-8") as fh:
            json.dump(m, fh)
    elif damage == "manifest_cut":
        os.truncate(manifest, os.path.getsize(manifest) // 2)
    else:
        os.remove(manifest)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=tc.__name__):
        rebuilt = _build(cfg, dm, teacher, root, verify=verify)
    reason = {"flip_a_byte": "features file modified since its build",
              "flip_a_byte_keep_mtime": "checksum", "truncate": "size",
              "manifest_shape": "shape",
              "no_manifest": "no manifest",
              # the parser's message whole, with the file and the position
              "manifest_cut": f"unreadable manifest ({manifest}: not valid JSON: "}[damage]
    assert "must be built" in caplog.text and reason in caplog.text
    if damage == "manifest_cut":
        assert re.search(r"line \d+ column \d+ \(char \d+\)\)", caplog.text), caplog.text
    assert np.array_equal(np.asarray(rebuilt.features), good)


def test_not_enough_disk_is_one_clear_error(setup, monkeypatch):
    cfg, dm, teacher, root = setup
    monkeypatch.setattr(tc.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(tc.CacheError, match=r"needs [\d,]+ bytes .* only 10 are free"):
        _build(cfg, dm, teacher, root)


def test_config_refuses_a_cache_with_batch_statistics(mars_root):
    with pytest.raises(ValueError, match=r"vkd.teacher_bn='batch'.*cannot be cached"):
        tiny_config(mars_root[0], "unused", "vkd.stage", "student", "vkd.teacher_checkpoint",
                    "t.pth", "vkd.teacher_cache", "True")


def test_student_pick_depends_on_seed_epoch_and_index_only():
    a = student_pick(1, 3, 17, 8, 2)
    assert a == student_pick(1, 3, 17, 8, 2) and len(set(a)) == 2 and all(0 <= i < 8 for i in a)
    for vary in range(3):  # each of seed, epoch and index changes the draw
        picks = {student_pick(*[v + k if j == vary else v for j, v in enumerate((1, 3, 17))],
                              8, 2) for k in range(30)}
        assert len(picks) > 10, vary
    assert len({student_pick(1, 0, i, 8, 2) for i in range(200)}) > 20  # spread over pairs
    assert student_pick(1, 0, 0, 8, 0) == ()


def _student_run(root, save, teacher_ckpt, cache, *extra):
    cfg = tiny_config(root, save, "train.max_epoch", "1", "vkd.stage", "student",
                      "vkd.teacher_checkpoint", teacher_ckpt, "vkd.teacher_bn", "eval",
                      "vkd.teacher_cache", cache, *extra)
    train(cfg)
    with open(os.path.join(save, "losses.jsonl"), encoding="utf-8") as fh:
        return cfg, [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def teacher_file(mars_root, tmp_path_factory):
    n = mars_root[1]["train_ids"]
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    model = _teacher(n)
    ckpt_io.atomic_save({"state_dict": model.state_dict(), "epoch": 1,
                         "meta": {"arch": model.arch, "num_classes": n, "stage": "teacher",
                                  "generation": 0}}, path)
    return path


def _count_training_decodes(monkeypatch):
    """The paths of the training frames the training loader really decodes (its dataset's
    ``read_image``, spied; with ``data.workers 0`` it runs in this process). The teacher
    cache's build has its own reader and is not counted; test frames are not training ones."""
    import vkd_torchreid.data.frames as frames

    decoded, real = [], frames.read_image

    def spy(path):
        image = real(path)
        if f"{os.sep}bbox_train{os.sep}" in path:
            decoded.append(path)
        return image

    monkeypatch.setattr(frames, "read_image", spy)
    return decoded


@pytest.mark.parametrize("cache", ["True", "False"])
def test_the_loader_decodes_only_the_students_frames(mars_root, teacher_file, tmp_path, cache,
                                                     monkeypatch):
    decoded = _count_training_decodes(monkeypatch)
    cfg, rows = _student_run(mars_root[0], str(tmp_path / "s"), teacher_file, cache)
    assert cfg.data.workers == 0 and rows
    # the reported count is the number of images that were decoded, not a number the code
    # derives from its own settings
    assert sum(row["frames_decoded"] for row in rows) == len(decoded) > 0
    per_item = cfg.vkd.student_frames if cache == "True" else cfg.video.seq_len
    for row in rows:
        assert row["frames_decoded"] == row["steps"] * cfg.train.batch_size * per_item
    if cache == "True":
        assert os.path.isdir(os.path.join(str(tmp_path / "s"), "teacher_cache"))


@pytest.mark.slow
def test_sigkill_during_the_build_leaves_nothing_that_is_reused(mars_root, teacher_file,
                                                                  tmp_path):
    root = str(tmp_path / "cache")
    script = f"""
import sys, time, torch
sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
import vkd_torchreid
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine import teacher_cache as tc
from vkd_torchreid.models import load_weights, build_model
from conftest import tiny_config
cfg = tiny_config({mars_root[0]!r}, {str(tmp_path / 'run')!r})
dm = VKDDataManager.from_config(cfg)
teacher = build_model("vkd_resnet18", dm.num_train_pids, pretrained=False)
load_weights(teacher, {teacher_file!r})
teacher.eval()
forward = teacher.forward
def slow(x):
    print("embedding", flush=True)
    time.sleep(0.5)
    return forward(x)
teacher.forward = slow
key = tc.CacheKey(teacher=tc.state_hash(teacher), arch=teacher.arch, last_stride=1,
                  feature_dim=teacher.feature_dim, datasets=("vkd_mars",),
                  frames=tc.frames_hash(dm.train_tracklets), height=32, width=16,
                  norm_mean=tuple(cfg.data.norm_mean), norm_std=tuple(cfg.data.norm_std),
                  resize=tc.RESIZE_VERSION, flip=True, precision="")
tc.open_or_build(teacher, dm.train_tracklets, key, {root!r}, dm.augment,
                 torch.device("cpu"), batch_size=8)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # torchreid prints its own lines first
        if line.strip() == "embedding":
            break
    else:
        raise AssertionError(f"the build never started (exit code {proc.wait()})")
    time.sleep(0.6)  # a few batches written into the temporary file
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    folders = os.listdir(root)
    assert len(folders) == 1
    left = os.listdir(os.path.join(root, folders[0]))
    assert tc.MANIFEST_FILE not in left and tc.FEATURES_FILE not in left
    assert any(name.startswith(f".{tc.FEATURES_FILE}.tmp-") for name in left)
    cfg = tiny_config(mars_root[0], str(tmp_path / "run"))
    dm = VKDDataManager.from_config(cfg)
    teacher = _teacher(dm.num_train_pids)
    from vkd_torchreid.models import load_weights

    load_weights(teacher, teacher_file)
    cache = _build(cfg, dm, teacher.eval(), root)
    assert os.path.basename(cache.folder) == folders[0]
    assert tc.MANIFEST_FILE in os.listdir(cache.folder)


@pytest.mark.slow
def test_resume_reuses_the_cache_and_a_new_generation_builds_its_own(mars_root, teacher_file,
                                                                      tmp_path, caplog):
    from vkd_torchreid import cli

    save = str(tmp_path / "s")
    base = ["--root", mars_root[0], "data.save_dir", save, "data.height", "32", "data.width",
            "16", "data.workers", "0", "use_gpu", "False", "model.pretrained", "False",
            "model.name", "vkd_resnet18", "test.batch_size", "8", "train.print_freq", "1000",
            "train.batch_size", "8", "sampler.num_instances", "2", "video.seq_len", "4",
            "vkd.stage", "student", "vkd.teacher_checkpoint", teacher_file,
            "vkd.teacher_bn", "eval", "vkd.teacher_cache", "True"]
    assert cli.main([*base, "train.max_epoch", "1"]) == 0
    root = os.path.join(save, "teacher_cache")
    (folder,) = os.listdir(root)
    features = os.path.join(root, folder, tc.FEATURES_FILE)
    stamp = os.stat(features).st_mtime_ns
    with caplog.at_level(logging.INFO, logger=tc.__name__):
        assert cli.main(["--resume", *base, "train.max_epoch", "2"]) == 0
    assert "teacher cache reused" in caplog.text and os.stat(features).st_mtime_ns == stamp
    gen = str(tmp_path / "g")
    assert cli.main([*base[:2], "data.save_dir", gen, *base[4:], "train.max_epoch", "1",
                     "vkd.generations", "2"]) == 0
    assert len(os.listdir(os.path.join(gen, "teacher_cache"))) == 2  # one per teacher


def test_device_copy_gathers_the_same_rows(setup):
    cfg, dm, teacher, root = setup
    cache = _build(cfg, dm, teacher, root)
    rows = torch.tensor([[0, 5, 7], [2, 2, 9]])
    from_map = cache.gather(rows)
    targets = _targets(cfg, dm, root, device_copy=True)
    targets.prepare(teacher, torch.device("cpu"))
    assert isinstance(targets.features, torch.Tensor) and targets.features.dtype == torch.float16
    assert torch.equal(targets.gather(rows), from_map) and from_map.shape == (2, 3, 512)


def test_engine_checks_the_targets_against_its_options(setup):
    from vkd_torchreid.engine import DistillOptions, EngineOptions, VKDEngine

    cfg, dm, teacher, root = setup
    student = build_model("vkd_resnet18", dm.num_train_pids, pretrained=False)
    distill = DistillOptions.from_config(cfg)
    assert distill.targets == "live"  # tiny_config: no teacher cache
    opt = torch.optim.Adam(student.parameters())
    with pytest.raises(ValueError, match="targets='live' but the engine was given cached"):
        VKDEngine(dm, student, teacher, opt, None, EngineOptions.from_config(cfg), distill,
                  targets=_targets(cfg, dm, root))


def test_distill_options_say_which_targets_run(mars_root):
    from vkd_torchreid.engine import DistillOptions

    base = ("vkd.stage", "student", "vkd.teacher_checkpoint", "t.pth", "vkd.teacher_bn", "eval")
    cached = tiny_config(mars_root[0], "unused", *base, "vkd.teacher_cache", "True")
    assert DistillOptions.from_config(cached).targets == "cached"
    # the paper's control never runs the teacher: nothing to cache
    control = tiny_config(mars_root[0], "unused", *base, "vkd.teacher_cache", "True",
                          "vkd.alpha", "0.0", "vkd.beta", "0.0")
    assert DistillOptions.from_config(control).targets == "live"
    assert DistillOptions.from_config(tiny_config(mars_root[0], "unused", *base)).targets == "live"
