"""Finishing batches on the device and decoding on the GPU: the same augmentations wherever they
are applied (bitwise on the CPU), JPEG bytes and drawn geometry from the workers, the config
errors. Tests marked ``cuda`` run only where CUDA is (tools/gpu_check.py runs them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vkd_torchreid.config import validation
from vkd_torchreid.data import gpu_decode
from vkd_torchreid.data.batch import Batch
from vkd_torchreid.data.collate import FinishingLoader, TrainCollate
from vkd_torchreid.data.frames import TrainFrames
from vkd_torchreid.data.gpu_decode import decode_difference, decode_frames, decode_jpegs
from vkd_torchreid.data.io import CorruptImageError, read_image, read_jpeg_bytes, write_jpeg
from vkd_torchreid.data.manager import VKDDataManager, make_loader
from vkd_torchreid.data.transforms import (
    AugmentOptions,
    TrainFrameTransform,
    draw_erase_boxes,
    erase_boxes_,
    normalize_batch,
    normalize_on_device,
    pad_crop_flip,
    random_erase_,
)

from conftest import tiny_config

CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
_OPTS = AugmentOptions(height=32, width=16, norm_mean=(0.485, 0.456, 0.406),
                       norm_std=(0.229, 0.224, 0.225), pad=2, flip_prob=0.5, erase_prob=0.5,
                       erase_scale=(0.02, 0.4), erase_ratio=None, erase_ratio_dist="uniform")


def _frames(n=6, h=32, w=16, seed=0):
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, (n, 2, h, w, 3),
                                                                 dtype=np.uint8))


# ----------------------------------------------------------------------- pieces, bitwise on CPU
def test_normalize_on_device_is_normalize_batch_bit_for_bit():
    frames = _frames()
    want = normalize_batch(frames, _OPTS.norm_mean, _OPTS.norm_std)
    for cl in (False, True):
        got = normalize_on_device(frames, _OPTS.norm_mean, _OPTS.norm_std, torch.device("cpu"),
                                  channels_last=cl)
        assert got.shape == want.shape == (6, 2, 3, 32, 16) and torch.equal(got, want)
        assert got[0].is_contiguous(memory_format=torch.channels_last) == cl
    bf16 = normalize_on_device(frames, _OPTS.norm_mean, _OPTS.norm_std, torch.device("cpu"),
                               dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, want.to(torch.bfloat16))


@pytest.mark.parametrize("dist", ["uniform", "log"])
def test_erase_boxes_are_random_erase_with_the_same_draws(dist):
    x = normalize_batch(_frames(n=40), _OPTS.norm_mean, _OPTS.norm_std)
    np.random.seed(3)
    want = random_erase_(x.clone(), 0.5, (0.02, 0.4), (0.3, 3.3), ratio_dist=dist)
    np.random.seed(3)
    boxes = draw_erase_boxes(80, 32, 16, 0.5, (0.02, 0.4), (0.3, 3.3), dist)
    assert 10 < len(boxes) < 70 and len(set(boxes[:, 0])) == len(boxes)  # one box a frame
    got = erase_boxes_(x.clone(), torch.from_numpy(boxes))
    assert torch.equal(got, want) and not torch.equal(got, x)


def test_drawn_geometry_applied_later_is_the_frame_transform():
    """draw_geometry + pad_crop_flip give what TrainFrameTransform gives, from the same RNG."""
    tf = TrainFrameTransform(_OPTS)
    imgs = [np.ascontiguousarray(f) for f in _frames(n=12)[:, 0].numpy()]
    np.random.seed(5)
    want = np.stack([tf(img) for img in imgs])
    after_want = np.random.random_sample()
    np.random.seed(5)
    geometry = torch.tensor([tf.draw_geometry() for _ in imgs])
    assert np.random.random_sample() == after_want  # the same number of draws
    got = pad_crop_flip(torch.from_numpy(np.stack(imgs)), geometry, _OPTS.pad)
    assert np.array_equal(got.numpy(), want) and set(geometry[:, 2].tolist()) == {0, 1}
    forced = tf.draw_geometry(flip=True)  # a given flip draws only the crop
    assert forced[2] is True and 0 <= forced[0] <= 2 * _OPTS.pad


# ----------------------------------------------------------------------- loaders
def _loader_pair(mars_root, workers, *extra):
    """The training loader as it is, and the same data finished on the device."""
    cfg = tiny_config(mars_root[0], "unused", "data.workers", str(workers),
                      "train.batch_size", "4", "data.random_erase_prob", "1.0", *extra)
    dm = VKDDataManager.from_config(cfg)
    cpu = dm.train_loader
    dev = make_loader(cpu.dataset, dm.augment, dm.erase_ratio, workers, False, on_device=True,
                      batch_sampler=cpu.batch_sampler)
    return dm, cpu, dev


def _batches(loader, n=3):
    torch.manual_seed(0)
    np.random.seed(0)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_training_batches_finished_on_the_device_equal_the_cpu_ones(mars_root, workers):
    dm, cpu, dev = _loader_pair(mars_root, workers)
    assert isinstance(dev, FinishingLoader) and dev.on_device and not cpu.on_device
    for a, b in zip(_batches(cpu), _batches(dev)):
        assert a.finished and not b.finished and b.img.dtype == torch.uint8
        assert b.work is not None and b.work.erase is not None and len(b.work.erase)
        got = b.device_images(torch.device("cpu"), channels_last=True)
        assert torch.equal(got, a.img)  # bitwise: same draws, same arithmetic
        assert torch.equal(a.pid, b.pid) and a.decoded == b.decoded


def test_test_loaders_and_the_engine_take_the_same_path(mars_root):
    from vkd_torchreid.data.manager import test_loader

    dm = VKDDataManager.from_config(tiny_config(mars_root[0], "unused", "data.workers", "0"))
    items = dm.test_dataset["vkd_mars"]["gallery"]
    plain = test_loader(items, True, dm.augment, dm.sampling)
    dev = test_loader(items, True, dm.augment, dm.sampling, on_device=True)
    for a, b in zip(plain, dev):
        assert b.work is not None and b.work.erase is None
        assert torch.equal(b.device_images(torch.device("cpu")), a.img)
    with pytest.raises(ValueError, match="without its device work"):
        Batch(img=torch.zeros(1, 1, 4, 4, 3, dtype=torch.uint8), pid=torch.zeros(1),
              camid=torch.zeros(1)).device_images(torch.device("cpu"))


# ----------------------------------------------------------------------- JPEG bytes (CPU side)
def test_jpeg_bytes_are_checked_and_named(tmp_path):
    img = np.random.RandomState(0).randint(0, 256, (20, 10, 3), dtype=np.uint8)
    good = str(tmp_path / "a.jpg")
    write_jpeg(good, img)
    data = read_jpeg_bytes(good)
    content = (tmp_path / "a.jpg").read_bytes()
    assert data.dtype == torch.uint8 and bytes(data.numpy()) == content
    png = tmp_path / "b.jpg"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    cut = tmp_path / "c.jpg"
    cut.write_bytes(content[:-200])
    for path, reason in ((png, "not a JPEG"), (cut, "truncated JPEG")):
        with pytest.raises(CorruptImageError, match=f"{path}.*{reason}"):
            read_jpeg_bytes(str(path))
    with pytest.raises(FileNotFoundError, match="image not found: .*none.jpg"):
        read_jpeg_bytes(str(tmp_path / "none.jpg"))


def test_byte_reading_items_carry_the_same_draws(mars_root):
    """With decode_device cuda the workers read bytes and draw the geometry the CPU path
    draws; decoding (here torchvision's CPU libjpeg) gives frames close to OpenCV + Pillow."""
    cfg = tiny_config(mars_root[0], "unused", "data.workers", "0", "train.batch_size", "4")
    dm = VKDDataManager.from_config(cfg)
    cpu_set = dm.train_loader.dataset
    byte_set = TrainFrames(dm.train_tracklets, cpu_set.transform, jpeg_bytes=True)
    spec = next(iter(dm.train_loader.batch_sampler))[0]
    np.random.seed(1)
    item = cpu_set[spec]
    after = np.random.random_sample()
    np.random.seed(1)
    raw = byte_set[spec]
    assert np.random.random_sample() == after  # the same draws, in the same order
    assert raw.img.shape == (len(spec[2]), 0, 0, 3) and len(raw.jpeg) == len(spec[2])
    assert raw.geometry.shape == (len(spec[2]), 3) and raw.decoded == item.decoded
    collate = TrainCollate(dm.augment, dm.erase_ratio)
    packed = collate([raw])  # the bytes cross from a worker as two tensors, not one a frame
    assert packed.jpeg.dtype == torch.uint8 and packed.jpeg.dim() == 1
    assert packed.jpeg_sizes.tolist() == [int(t.numel()) for t in raw.jpeg]
    batch = collate.for_device(packed)
    assert batch.work.jpeg is not None and batch.jpeg is None and batch.jpeg_sizes is None
    assert all(torch.equal(a, b) for a, b in zip(batch.work.jpeg, raw.jpeg))
    frames = decode_frames(batch.work.jpeg, batch.work.geometry, (32, 16), dm.augment.pad,
                           torch.device("cpu"))
    diff = np.abs(frames.numpy().astype(int) - item.img.astype(int))
    assert frames.shape == item.img.shape and diff.mean() < 3.0  # not Pillow-exact


def test_a_frame_that_does_not_decode_is_named(mars_root, tmp_path):
    """With decode_device cuda a JPEG whose start and end markers are intact passes the
    workers' check; when the batch's decode then fails in the training process, the error is
    one line naming that file (here torchvision's CPU decoder stands in for nvJPEG)."""
    cfg = tiny_config(mars_root[0], "unused", "data.workers", "0", "train.batch_size", "4")
    dm = VKDDataManager.from_config(cfg)
    spec = next(iter(dm.train_loader.batch_sampler))[0]
    tracklets = [list(t) for t in dm.train_tracklets]
    t, f = spec[2][1]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8" + bytes(range(200)) + b"\xff\xd9")
    tracklets[t][0] = tuple(str(bad) if i == f else p for i, p in enumerate(tracklets[t][0]))
    frames = TrainFrames(tracklets, dm.train_loader.dataset.transform, jpeg_bytes=True)
    collate = TrainCollate(dm.augment, dm.erase_ratio)
    batch = collate.for_device(collate([frames[spec]]))
    assert batch.work.jpeg_paths[1] == str(bad) and len(batch.work.jpeg_paths) == len(spec[2])
    with pytest.raises(CorruptImageError) as err:
        batch.device_images(torch.device("cpu"))
    assert str(err.value).startswith(f"cannot decode image {bad}: not a decodable JPEG (")
    assert "\n" not in str(err.value) and ".cpp" not in str(err.value)


def test_decode_difference_reports_small_numbers(mars_root):
    paths = [p for t in VKDDataManager.from_config(tiny_config(
        mars_root[0], "unused")).train_tracklets[:3] for p in t[0][:4]]
    d = decode_difference(paths, 32, 16, torch.device("cpu"))
    assert d["frames"] == 12 and 0 <= d["mean"] < 3.0 and d["max"] <= 255
    assert d["decode_mean"] < 3.0  # libjpeg vs OpenCV's libjpeg-turbo: close


# ----------------------------------------------------------------------- config
def test_decode_device_config_errors(mars_root, monkeypatch):
    def cfg_error(*opts):
        with pytest.raises(ValueError) as err:
            tiny_config(mars_root[0], "unused", "data.decode_device", *opts)
        assert "\n" not in str(err.value) and "data.decode_device" in str(err.value)
        return str(err.value)

    assert "one of 'cpu', 'cuda'" in cfg_error("gpu")
    if not CUDA:
        assert "needs CUDA" in cfg_error("cuda", "use_gpu", "True")
    monkeypatch.setattr(validation.torch.cuda, "is_available", lambda: True)
    assert "needs CUDA" in cfg_error("cuda", "use_gpu", "False")
    assert "skip_corrupt" in cfg_error("cuda", "use_gpu", "True", "data.skip_corrupt", "True")
    png = type("PngFrames", (), {"FRAME_FORMAT": "png"})
    monkeypatch.setattr(validation, "dataset_class", lambda name: png)
    assert "vkd_mars: its frames are not JPEG files (png)" in cfg_error("cuda", "use_gpu", "True")


def test_gpu_decoding_allocates_on_a_side_stream_and_guards_its_frames(monkeypatch):
    """nvJPEG's outputs are allocated with a side stream current (never from blocks the
    caller's queued kernels still read), the caller waits for that stream, and every frame
    is recorded as used by the caller's stream (its block stays out of reuse until then).
    The effect itself is checked on CUDA by the test below and by tools/gpu_check.py."""
    import torchvision.io

    calls = []

    class FakeStream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            calls.append(("wait", self.name, other.name))

    current = [FakeStream("caller")]

    class StreamContext:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            current.append(self.stream)

        def __exit__(self, *exc):
            current.pop()

    class Frame:
        def record_stream(self, stream):
            calls.append(("record", stream.name))

    def fake_decode_jpeg(data, mode, device):
        calls.append(("decode", current[-1].name, len(data), str(device)))
        return [Frame() for _ in data]

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream("side"))
    monkeypatch.setattr(torch.cuda, "stream", StreamContext)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake_decode_jpeg)
    monkeypatch.setattr(gpu_decode, "_DECODE_STREAMS", {})
    jpeg = [torch.zeros(4, dtype=torch.uint8)] * 2
    frames = decode_jpegs(jpeg, torch.device("cuda", 0))
    assert len(frames) == 2 and current[-1].name == "caller"
    assert calls == [("decode", "side", 2, "cuda:0"), ("wait", "caller", "side"),
                     ("record", "caller"), ("record", "caller")]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    decode_jpegs(jpeg, torch.device("cuda"))  # as cuda:0: torchvision keeps one decoder
    assert calls[4] == ("decode", "side", 2, "cuda:0")
    assert list(gpu_decode._DECODE_STREAMS) == [0]  # one side stream per GPU, kept
    # a caller on a pooled stream is never given its own stream as the side stream
    monkeypatch.setattr(gpu_decode, "_DECODE_STREAMS", {})
    pool = iter([current[0], FakeStream("other")])
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: next(pool))
    calls.clear()
    decode_jpegs(jpeg, torch.device("cuda", 0))
    assert calls[0] == ("decode", "other", 2, "cuda:0")


# ----------------------------------------------------------------------- CUDA
@cuda
def test_cuda_finishing_equals_the_cpu_within_float_tolerance(mars_root):
    dm, cpu, dev = _loader_pair(mars_root, 0)
    for a, b in zip(_batches(cpu), _batches(dev)):
        got = b.device_images(torch.device("cuda"), channels_last=True)
        assert got.is_cuda and got.dtype == torch.float32
        torch.testing.assert_close(got.cpu(), a.img, atol=1e-5, rtol=0)
        half = b.device_images(torch.device("cuda"), True, torch.bfloat16)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float().cpu(), a.img.to(torch.bfloat16).float())


@cuda
def test_cuda_decoding_is_close_to_the_cpu_path(mars_root):
    paths = [p for t in VKDDataManager.from_config(tiny_config(
        mars_root[0], "unused")).train_tracklets[:4] for p in t[0][:4]]
    d = decode_difference(paths, 32, 16, torch.device("cuda"))
    assert d["mean"] < 3.0 and d["decode_mean"] < 3.0, d
    img = read_image(paths[0])
    frames = decode_frames([read_jpeg_bytes(paths[0])], torch.zeros(1, 3, dtype=torch.int64),
                           img.shape[:2], 0, torch.device("cuda"))
    assert frames.is_cuda and frames.shape == (1, *img.shape)


@cuda
def test_cuda_decoding_never_writes_memory_queued_kernels_still_read(mars_root):
    """Tensors freed while reductions of them are still queued: decoding must not be handed
    their blocks (torchvision's decode_jpeg called as it is is, and overwrites them)."""
    from vkd_torchreid.apps.gpu_check import corrupted_reductions

    paths = [p for t in VKDDataManager.from_config(tiny_config(
        mars_root[0], "unused")).train_tracklets[:4] for p in t[0][:4]]
    jpeg = [read_jpeg_bytes(p) for p in paths]
    device = torch.device("cuda")
    nbytes = [int(f.numel()) for f in decode_jpegs(jpeg, device)]
    bad, checked = corrupted_reductions(lambda: decode_jpegs(jpeg, device), nbytes, device)
    assert checked == 10 * len(paths) and bad == 0


@cuda
@pytest.mark.parametrize("stage", ["teacher", "student"])
@pytest.mark.parametrize("decode", ["cpu", "cuda"])
def test_cuda_step_makes_no_host_sync_before_its_loss_read_back(mars_root, tmp_path,
                                                                monkeypatch, stage, decode):
    """From the loader's batch to the queued backward pass the host never waits for the
    device (a blocking copy after the teacher's forward left the GPU idle while the student's
    forward was queued); the read-back of the loss values is the step's one synchronisation."""
    from vkd_torchreid.engine import base
    from vkd_torchreid.engine.build import build_engine
    from vkd_torchreid.models import build_model

    student = (["vkd.teacher_checkpoint", "(unused)", "vkd.student_frames", "2"]
               if stage == "student" else [])
    cfg = tiny_config(mars_root[0], str(tmp_path), "use_gpu", "True", "vkd.stage", stage,
                      *student, "data.decode_device", decode, "train.amp", "bf16",
                      "train.channels_last", "True")
    dm = VKDDataManager.from_config(cfg)
    teacher = (build_model(cfg.model.name, dm.num_train_pids, loss="triplet", pretrained=False)
               if stage == "student" else None)
    engine = build_engine(cfg, dm, teacher=teacher, callbacks=[])
    engine.set_model_mode("train")
    read_back = base.synced_values

    def unchecked_read_back(*args):
        torch.cuda.set_sync_debug_mode(0)
        return read_back(*args)

    monkeypatch.setattr(base, "synced_values", unchecked_read_back)
    # cuDNN's search, first allocations, pinned blocks (the tiny world's epoch is one batch)
    engine.forward_backward(next(iter(engine.train_loader)))
    batch = next(iter(engine.train_loader))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        values = engine.forward_backward(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert np.isfinite(values["loss"])


@cuda
def test_cuda_training_step_takes_uint8_batches(mars_root, tmp_path):
    """A teacher-stage epoch with the batch finished (and decoded) on the GPU trains."""
    from vkd_torchreid.engine.build import train

    for decode in ("cpu", "cuda"):
        cfg = tiny_config(mars_root[0], str(tmp_path / decode), "use_gpu", "True",
                          "train.max_epoch", "1", "data.decode_device", decode,
                          "train.amp", "bf16", "train.channels_last", "True")
        out = train(cfg)
        assert out.engine.device.type == "cuda" and out.results["epoch"] == 1


@cuda
def test_cuda_evaluation_and_cache_build_match_the_cpu(mars_root, tmp_path):
    """The test loaders (uint8 to the GPU, normalised there) and the teacher-cache build give
    the CPU's features within the GPU's float tolerance (TF32 convolutions included)."""
    from vkd_torchreid.engine import teacher_cache as tc
    from vkd_torchreid.engine.evaluator import Evaluator
    from vkd_torchreid.models import build_model

    feats = {}
    for use_gpu in ("False", "True"):
        cfg = tiny_config(mars_root[0], str(tmp_path), "use_gpu", use_gpu)
        dm = VKDDataManager.from_config(cfg)
        assert dm.use_gpu == (use_gpu == "True")
        torch.manual_seed(0)
        model = build_model("vkd_resnet18", dm.num_train_pids, pretrained=False).eval()
        evaluator = Evaluator.from_config(cfg, dm)
        device = evaluator.device
        with torch.inference_mode():
            feats[use_gpu] = evaluator.features(model.to(device), "vkd_mars")["gallery"].emb
        key = tc.CacheKey.from_config(cfg, model, dm.train_tracklets)
        cache = tc.open_or_build(model, dm.train_tracklets, key, str(tmp_path / use_gpu),
                                 dm.augment, device)
        feats[use_gpu + "_cache"] = torch.from_numpy(np.asarray(cache.features, np.float32))
    for name in ("", "_cache"):
        a, b = feats["False" + name], feats["True" + name]
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-2 * a.abs().max(), name
