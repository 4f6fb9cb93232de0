"""Shared fixtures: tiny synthetic datasets on disk, small configs, CPU threads."""
from __future__ import annotations

import os

import pytest
import torch

import vkd_torchreid  # noqa: F401  (registers datasets and models with torchreid)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = ["data.height", "32", "data.width", "16", "data.workers", "0", "use_gpu", "False",
        "model.pretrained", "False", "model.name", "vkd_resnet18", "test.batch_size", "8",
        "train.print_freq", "1000", "train.max_epoch", "2"]


@pytest.fixture(scope="session")
def mars_root(tmp_path_factory):
    """A small synthetic MARS written once per test session (do not modify it)."""
    from vkd_torchreid.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("mars_root")
    counts = write_synthetic("vkd_mars", str(root), ids=8, cams=3, tracklets=2, frames=8, seed=0)
    return str(root), counts


def tiny_config(root: str, save_dir: str, *opts: str):
    """A validated tiny config for CPU tests."""
    from vkd_torchreid.config import build_config

    return build_config("", ["data.root", root, "data.save_dir", save_dir, *TINY,
                             "train.batch_size", "8", "sampler.num_instances", "2",
                             "video.seq_len", "4", *opts])
