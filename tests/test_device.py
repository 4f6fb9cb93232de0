"""CUDA backend flags from the config, and the wait timing of an iterable (both on CPU)."""
from __future__ import annotations

import time

import pytest
import torch

from vkd_torchreid.config import build_config
from vkd_torchreid.engine import build
from vkd_torchreid.utils.device import configure_cuda
from vkd_torchreid.utils.timing import TimedIterable


@pytest.fixture
def backend_flags():
    """Restores the process-wide flags a test changes."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
     torch.backends.cudnn.allow_tf32) = saved


@pytest.mark.parametrize("tf32", [True, False])
def test_configure_cuda_sets_the_backend_flags(backend_flags, tf32):
    flags = configure_cuda(True, tf32)
    assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32
    assert flags == {"cudnn_benchmark": True, "matmul_tf32": tf32, "cudnn_tf32": tf32}
    configure_cuda(False, None)  # None: TF32 flags left as they are
    assert torch.backends.cudnn.benchmark is False
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)


def test_config_flags_apply_only_with_cuda(backend_flags, monkeypatch):
    cfg = build_config("", ["train.cudnn_benchmark", "False", "train.tf32", "True"])
    assert build_config("", []).train.cudnn_benchmark is True  # the defaults
    assert build_config("", []).train.tf32 is None
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    build.configure_device(cfg)  # no CUDA: nothing changes
    assert torch.backends.cudnn.benchmark is True and not torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    build.configure_device(cfg)
    assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("key,value", [("train.tf32", "'yes'"), ("train.tf32", "2")])
def test_tf32_takes_none_true_or_false(key, value):
    with pytest.raises(ValueError, match=f"{key}=.*None, True, False"):
        build_config("", [key, value])


def test_timed_iterable_sums_the_waits_and_forwards_the_rest():
    class Slow:
        dataset = "frames"

        def __len__(self):
            return 3

        def __iter__(self):
            for i in range(3):
                time.sleep(0.02)
                yield i

    timed = TimedIterable(Slow())
    start = time.perf_counter()
    got = []
    for item in timed:
        got.append(item)
        time.sleep(0.05)  # the consumer's work is not a wait
    total = time.perf_counter() - start
    assert got == [0, 1, 2] and len(timed) == 3 and timed.dataset == "frames"
    assert 0.06 <= timed.wait_s < total - 0.15
    timed.reset()
    assert timed.wait_s == 0.0
