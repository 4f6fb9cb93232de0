"""Image decoding errors and the augmentation pipeline (against torchvision's definitions)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vkd_torchreid.config import get_default_config
from vkd_torchreid.data import io as io_module
from vkd_torchreid.data.batch import Batch, Item
from vkd_torchreid.data.collate import FinishingLoader, TestCollate, TrainCollate
from vkd_torchreid.data.io import CorruptImageError, read_image, write_jpeg
from vkd_torchreid.data.transforms import (
    AugmentOptions,
    TrainFrameTransform,
    normalize_batch,
    pad_random_crop,
    random_erase_,
    resize,
)

from conftest import tiny_config


def _image(h=40, w=20):
    rng = np.random.RandomState(0)
    return (rng.rand(h, w, 3) * 255).astype(np.uint8)


def test_read_roundtrip_and_errors(tmp_path, monkeypatch):
    path = str(tmp_path / "a.jpg")
    img = np.zeros((32, 16, 3), np.uint8)
    img[:, :, 0] = 200  # red
    write_jpeg(path, img, quality=100)
    out = read_image(path)
    assert out.shape == (32, 16, 3) and out[..., 0].mean() > 190 and out[..., 2].mean() < 10

    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(str(tmp_path / "missing.jpg"))

    # Every broken file raises at once: one read of the file and at most one decode, never a
    # retry (torchreid's read_image retries an unreadable file forever). The counters refuse
    # a third attempt, so a retrying reader fails here instead of hanging.
    calls = {"read": 0, "decode": 0}

    def counted(kind, fn):
        def wrapper(*args, **kwargs):
            calls[kind] += 1
            if calls[kind] > 2:
                raise AssertionError(f"{kind} attempted {calls[kind]} times")
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(io_module.np, "fromfile", counted("read", np.fromfile))
    monkeypatch.setattr(io_module.cv2, "imdecode", counted("decode", io_module.cv2.imdecode))
    with open(path, "rb") as fh:
        data = fh.read()
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    # (file, message, decodes): a truncated JPEG and an empty file are refused before decoding
    for bad, match, decodes in ((truncated, "trunc.jpg.*truncated", 0),
                                (garbage, "garbage.jpg.*not a decodable", 1),
                                (empty, "empty.jpg.*empty", 0)):
        calls.update(read=0, decode=0)
        with pytest.raises(CorruptImageError, match=match):
            read_image(str(bad))
        assert calls == {"read": 1, "decode": decodes}, bad.name
    calls.update(read=0, decode=0)
    assert np.array_equal(read_image(path), out) and calls == {"read": 1, "decode": 1}


def _smooth_image(h, w, seed=0):
    """A natural-looking frame: smooth colour regions (bilinear upsampled noise) plus grain."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    coarse = (rng.rand(h // 8 + 2, w // 8 + 2, 3) * 200 + 20).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float64)
    return np.clip(smooth + rng.randn(h, w, 3) * 6, 0, 255).astype(np.uint8)


def _sharp_image(h, w, seed=0):
    """Hard edges: random black/white 5-pixel blocks per channel, with a 3-pixel checkerboard
    in the top half (the worst case for a resize that does not antialias)."""
    rng = np.random.RandomState(seed)
    blocks = rng.randint(0, 2, (h // 5 + 1, w // 5 + 1, 3)).astype(np.uint8) * 255
    img = np.repeat(np.repeat(blocks, 5, 0), 5, 1)[:h, :w].copy()
    y, x = np.mgrid[:h // 2, :w]
    img[:h // 2] = (((y // 3 + x // 3) % 2) * 255).astype(np.uint8)[..., None]
    return img


def _pil_bicubic(img, height, width):
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((width, height), Image.BICUBIC))


@pytest.mark.parametrize("src,dst", [((400, 170), (256, 128)), ((300, 300), (224, 224)),
                                     ((128, 64), (256, 128)), ((250, 130), (256, 128))])
@pytest.mark.parametrize("kind", ["smooth", "sharp"])
def test_resize_equals_pil_bicubic(src, dst, kind):
    """Bit-exact with the reference's PIL bicubic (antialiased when shrinking), on natural
    and on hard-edged frames, shrinking and enlarging."""
    img = (_smooth_image if kind == "smooth" else _sharp_image)(*src)
    out = resize(img, *dst)
    assert out.shape == (*dst, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable  # pad/crop, flip and np.stack use it
    assert np.array_equal(out, _pil_bicubic(img, *dst))
    if src[0] > dst[0]:  # the antialiasing is there: not a plain (aliasing) cubic
        import cv2

        aliased = cv2.resize(img, dst[::-1], interpolation=cv2.INTER_CUBIC)
        assert np.abs(aliased.astype(int) - out.astype(int)).max() > 8


def test_resize_equals_torchvision_reference_transform():
    """The reference's ``T.Resize(size, interpolation=3)`` on a PIL image gives the same."""
    from PIL import Image
    from torchvision import transforms as T

    img = _sharp_image(400, 170, seed=3)
    ref = T.Resize((256, 128), interpolation=T.InterpolationMode.BICUBIC)(Image.fromarray(img))
    assert np.array_equal(resize(img, 256, 128), np.asarray(ref))
    flipped = img[:, ::-1]  # a strided view in: same as its contiguous copy
    assert np.array_equal(resize(flipped, 256, 128), resize(flipped.copy(), 256, 128))


def test_resize_same_size_is_the_same_object():
    img = _smooth_image(256, 128)
    assert resize(img, 256, 128) is img
    out = resize(img, 128, 256)  # same pixel count, other shape: resized
    assert out is not img and out.shape == (128, 256, 3)


def test_pad_random_crop_equals_pad_then_crop():
    img = _image()
    for seed in range(20):
        rng = np.random.RandomState(seed)
        out = pad_random_crop(img, 10, rng)
        rng = np.random.RandomState(seed)
        dy, dx = rng.randint(0, 21, size=2)
        padded = np.pad(img, ((10, 10), (10, 10), (0, 0)))
        assert np.array_equal(out, padded[dy:dy + 40, dx:dx + 20])


def test_normalize_matches_torchvision():
    from torchvision.transforms import functional as F

    img = _image()
    ours = normalize_batch(torch.from_numpy(img)[None], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[0]
    ref = F.normalize(F.to_tensor(img), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_random_erasing_boxes_follow_scale_and_ratio():
    np.random.seed(0)
    x = torch.ones(400, 3, 64, 32)
    random_erase_(x, prob=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.3))
    erased = (x == 0).all(1)  # [F, H, W]
    counts = erased.flatten(1).sum(1).float()
    frac = (counts > 0).float().mean().item()
    assert 0.4 < frac < 0.6
    areas = counts[counts > 0] / (64 * 32)
    assert areas.min() >= 0.015 and areas.max() <= 0.45
    for f in torch.nonzero(counts > 0)[:20, 0]:
        rows = erased[f].any(1).nonzero()
        cols = erased[f].any(0).nonzero()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert erased[f].sum() == h * w  # one rectangle


_COLLATE_OPTS = dataclasses.replace(AugmentOptions.from_config(get_default_config()), height=32,
                                    width=16, pad=2, erase_prob=0.0)


def _items(num_items: int, frames: int, camid: int, seed: int):
    """Decoded, augmented items as the train dataset yields them."""
    tf = TrainFrameTransform(_COLLATE_OPTS)
    np.random.seed(seed)
    return [Item(np.stack([tf(_image()) for _ in range(frames)]), i, camid)
            for i in range(num_items)]


def test_collate_shapes_and_train_flip():
    items = _items(4, 3, camid=1, seed=0)
    batch = TrainCollate(_COLLATE_OPTS, (0.3, 3.3))(items)
    assert batch.img.shape == (4, 3, 3, 32, 16) and batch.img.dtype == torch.float32
    assert batch.pid.tolist() == [0, 1, 2, 3] and batch.skipped == [] and batch.decoded == 12
    assert batch.index is None and batch.student is None and batch.teacher_rows is None
    # the batch is the items' frames, normalised (erasing is off)
    frames = torch.from_numpy(np.stack([it.img for it in items]))
    o = _COLLATE_OPTS
    assert torch.equal(batch.img, normalize_batch(frames, o.norm_mean, o.norm_std))
    # the flip is the training frame transform's: flip_prob 1 mirrors every frame, 0 none
    img = _image(32, 16)  # already 32 x 16: the resize keeps it; no padding: no shift
    no_pad = dataclasses.replace(o, pad=0)
    np.random.seed(0)
    flip = TrainFrameTransform(dataclasses.replace(no_pad, flip_prob=1.0))
    keep = TrainFrameTransform(dataclasses.replace(no_pad, flip_prob=0.0))
    assert all(np.array_equal(flip(img), img[:, ::-1]) for _ in range(5))
    assert all(np.array_equal(keep(img), img) for _ in range(5))
    flipped = [np.array_equal(TrainFrameTransform(no_pad)(img), img[:, ::-1])
               for _ in range(400)]  # the default flip_prob 0.5
    assert no_pad.flip_prob == 0.5 and 0.4 < np.mean(flipped) < 0.6


def test_deferred_collate_equals_in_worker_collate():
    """Loader workers send uint8 frames; finishing the batch afterwards gives the same tensor."""
    items = _items(3, 2, camid=0, seed=1)
    direct = TestCollate(_COLLATE_OPTS)(items)
    deferred_collate = TestCollate(_COLLATE_OPTS, defer=True)
    raw = deferred_collate(items)
    assert raw.img.dtype == torch.uint8 and raw.img.shape == (3, 2, 32, 16, 3)
    done = deferred_collate.finish(raw)
    assert done.img.dtype == torch.float32 and torch.equal(done.img, direct.img)


def test_worker_loader_batches_equal_in_process_batches(mars_root):
    from vkd_torchreid.data.manager import VKDDataManager

    def first_batches(workers):
        dm = VKDDataManager.from_config(tiny_config(mars_root[0], "unused", "data.workers",
                                                    str(workers), "train.batch_size", "4"))
        loader = dm.test_loader["vkd_mars"]["gallery"]
        # the second loader really decodes in a worker process (and finishes batches here)
        assert len(loader) > 0 and loader.num_workers == workers
        assert isinstance(loader, FinishingLoader) == (workers > 0)
        return [b.img for b in loader]

    in_process, with_worker = first_batches(0), first_batches(1)
    assert len(in_process) == len(with_worker)
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_worker))


def test_training_loader_is_typed_and_takes_the_epoch(mars_root):
    """With or without workers the training loader is a FinishingLoader of Batch; its
    set_epoch reaches the batch sampler, whose draws then change."""
    from vkd_torchreid.data.manager import VKDDataManager

    dm = VKDDataManager.from_config(tiny_config(mars_root[0], "unused", "data.workers", "0",
                                                "train.batch_size", "4"))
    loader = dm.train_loader
    assert isinstance(loader, FinishingLoader) and loader is dm.train_loader_for(None)
    first = list(iter(loader.batch_sampler))
    loader.set_epoch(3)
    assert loader.batch_sampler.epoch == 3 and list(iter(loader.batch_sampler)) != first
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and batch.finished and batch.teacher_rows is None
    assert batch.img.shape[:2] == (4, dm.sampling.seq_len) and batch.decoded == 4 * dm.sampling.seq_len
