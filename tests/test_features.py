"""FeatureExtractor: the embeddings of our evaluation, from paths, arrays or PIL images, without
reading data.root."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import vkd_torchreid
from vkd_torchreid.config import build_config
from vkd_torchreid.data.io import read_image
from vkd_torchreid.engine import build
from vkd_torchreid.models import build_model
from vkd_torchreid.utils import checkpoint as ckpt_io

from conftest import TINY

OPTS = ["data.height", "32", "data.width", "16", "use_gpu", "False", "model.name",
        "vkd_resnet18", "test.batch_size", "3", "video.test_seq_len", "4"]


@pytest.fixture(scope="module")
def weights(mars_root, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("vkd_resnet18", mars_root[1]["train_ids"], pretrained=False)
    with torch.no_grad():  # away from the initialisation's identical BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path_factory.mktemp("fx") / "latest.pth.tar")
    ckpt_io.atomic_save({"state_dict": model.state_dict(), "epoch": 1,
                         "meta": {"arch": model.arch, "num_classes": model.num_classes}}, path)
    return path


@pytest.fixture(scope="module")
def evaluation(mars_root, weights, tmp_path_factory):
    """Our evaluation's features of the synthetic MARS test splits, and its items."""
    cfg = build_config("", ["data.root", mars_root[0], "data.save_dir",
                            str(tmp_path_factory.mktemp("ev")), *TINY, *OPTS,
                            "model.load_weights", weights, "test.normalize_feature", "False"])
    job = build.prepare_evaluation(cfg)
    with torch.inference_mode():
        feats = job.evaluator.features(job.model.eval(), "vkd_mars")
    return feats, job.evaluator.datamanager.test_dataset["vkd_mars"]


def _extractor(weights, *opts, **kwargs):
    # data.root points nowhere: the extractor must not read it
    return vkd_torchreid.FeatureExtractor("", weights, device="cpu",
                                          opts=[*OPTS, "data.root", "/nonexistent", *opts],
                                          **kwargs)


def test_tracklets_equal_our_evaluation(weights, evaluation):
    feats, items = evaluation
    gallery = [paths for paths, *_ in items["gallery"]]
    got = _extractor(weights).tracklets(gallery)
    assert got.shape == feats["gallery"].emb.shape
    torch.testing.assert_close(got, feats["gallery"].emb, rtol=1e-5, atol=1e-5)


def test_images_equal_our_evaluation_from_paths_arrays_and_pil(weights, evaluation):
    feats, items = evaluation
    firsts = [paths[0] for paths, *_ in items["query"]]  # the I2V queries
    fx = _extractor(weights)
    want = feats["query"].first
    torch.testing.assert_close(fx(firsts), want, rtol=1e-5, atol=1e-5)
    arrays = [read_image(p) for p in firsts]
    torch.testing.assert_close(fx(arrays), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fx([Image.fromarray(a) for a in arrays]), want,
                               rtol=1e-5, atol=1e-5)
    bgr = _extractor(weights, channel_order="BGR")
    torch.testing.assert_close(bgr([a[..., ::-1] for a in arrays]), want, rtol=1e-5,
                               atol=1e-5)
    assert fx([]).shape == (0, fx.feature_dim)


def test_sample_method_all_pools_every_frame(weights, evaluation):
    _, items = evaluation
    paths = list(items["gallery"][0][0])
    fx = _extractor(weights, "video.sample_method", "all")
    torch.testing.assert_close(fx.tracklets([paths])[0], fx(paths).mean(0), rtol=1e-5,
                               atol=1e-5)


def test_bad_inputs_are_clear_errors(weights, tmp_path):
    fx = _extractor(weights)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(Exception, match="broken.jpg"):
        fx([str(bad)])
    with pytest.raises(ValueError, match="image 1: expected .* uint8"):
        fx([np.zeros((32, 16, 3), np.uint8), np.zeros((32, 16), np.float32)])
    with pytest.raises(ValueError, match="tracklet 0 has no frames"):
        fx.tracklets([[]])
    with pytest.raises(FileNotFoundError, match="weights not found: .*missing.pth"):
        _extractor(os.path.join(str(tmp_path), "missing.pth"))
    with pytest.raises(ValueError, match="channel_order"):
        _extractor(weights, channel_order="RBG")
