"""Image decoding errors and the augmentation pipeline (against torchvision's definitions)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from vkd_torchreid.data.io import CorruptImageError, read_image, write_jpeg
from vkd_torchreid.data.transforms import (
    AugmentOptions,
    Collate,
    TrainFrameTransform,
    normalize_batch,
    pad_random_crop,
    random_erase_,
)


def _image(h=40, w=20):
    rng = np.random.RandomState(0)
    return (rng.rand(h, w, 3) * 255).astype(np.uint8)


def test_read_roundtrip_and_errors(tmp_path):
    path = str(tmp_path / "a.jpg")
    img = np.zeros((32, 16, 3), np.uint8)
    img[:, :, 0] = 200  # red
    write_jpeg(path, img, quality=100)
    out = read_image(path)
    assert out.shape == (32, 16, 3) and out[..., 0].mean() > 190 and out[..., 2].mean() < 10

    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(str(tmp_path / "missing.jpg"))

    with open(path, "rb") as fh:
        data = fh.read()
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    start = time.perf_counter()
    with pytest.raises(CorruptImageError, match="trunc.jpg"):
        read_image(str(truncated))
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9")
    with pytest.raises(CorruptImageError, match="garbage.jpg"):
        read_image(str(garbage))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match="empty"):
        read_image(str(empty))
    assert time.perf_counter() - start < 2


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


_COLLATE_OPTS = AugmentOptions(height=32, width=16, pad=2, erase_prob=0.0)


def _items(num_items: int, frames: int, camid: int, seed: int):
    """Decoded, augmented items as the train dataset yields them."""
    tf = TrainFrameTransform(_COLLATE_OPTS)
    np.random.seed(seed)
    return [{"img": np.stack([tf(_image()) for _ in range(frames)]), "pid": i, "camid": camid}
            for i in range(num_items)]


def test_collate_shapes_and_train_flip():
    items = _items(4, 3, camid=1, seed=0)
    batch = Collate(_COLLATE_OPTS, (0.3, 3.3), train=True)(items)
    assert batch["img"].shape == (4, 3, 3, 32, 16) and batch["img"].dtype == torch.float32
    assert batch["pid"].tolist() == [0, 1, 2, 3] and batch["skipped"] == []


def test_deferred_collate_equals_in_worker_collate():
    """Loader workers send uint8 frames; finishing the batch afterwards gives the same tensor."""
    items = _items(3, 2, camid=0, seed=1)
    direct = Collate(_COLLATE_OPTS, (0.3, 3.3), train=False)(items)
    deferred_collate = Collate(_COLLATE_OPTS, (0.3, 3.3), train=False, defer=True)
    raw = deferred_collate(items)
    assert raw["img"].dtype == torch.uint8 and raw["img"].shape == (3, 2, 32, 16, 3)
    done = deferred_collate.finish(raw)
    assert "deferred" not in done and torch.equal(done["img"], direct["img"])


def test_worker_loader_batches_equal_in_process_batches(mars_root):
    from vkd_torchreid.data.manager import SamplingOptions, VKDDataManager

    def first_batches(workers):
        dm = VKDDataManager(mars_root[0], "vkd_mars", augment=AugmentOptions(32, 16),
                            sampling=SamplingOptions(stage="teacher", batch_size=4,
                                                     num_instances=2, seq_len=4,
                                                     workers=workers), use_gpu=False)
        loader = dm.test_loader["vkd_mars"]["gallery"]
        assert len(loader) > 0 and loader.dataset is not None
        return [b["img"] for b in loader]

    in_process, with_worker = first_batches(0), first_batches(1)
    assert len(in_process) == len(with_worker)
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_worker))
