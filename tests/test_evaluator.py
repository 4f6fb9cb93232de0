"""The Evaluator: metrics against a direct computation, results.json's layout, every test key
live (visrank, normalize_feature, progress), and the keys that were removed or moved."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vkd_torchreid import cli, evaluation
from vkd_torchreid.data.base import evenly_indices
from vkd_torchreid.data.io import read_image
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine.evaluator import EvalOptions, Evaluator
from vkd_torchreid.models import build_model
from vkd_torchreid.utils import checkpoint as ckpt_io
from vkd_torchreid.utils.progress import progress_enabled

from conftest import TINY, tiny_config

PROTOCOL_KEYS = {"rank1", "rank5", "rank10", "rank20", "mAP", "mAP_mars"}


@pytest.fixture(scope="module")
def weights(mars_root, tmp_path_factory):
    """A random vkd_resnet18 saved as our checkpoint, with the training set's classes."""
    torch.manual_seed(0)
    model = build_model("vkd_resnet18", mars_root[1]["train_ids"], pretrained=False)
    path = str(tmp_path_factory.mktemp("weights") / "model.pth")
    ckpt_io.atomic_save({"state_dict": model.state_dict(), "epoch": 7,
                         "meta": {"arch": model.arch, "num_classes": model.num_classes,
                                  "stage": "student", "generation": 0}}, path)
    return model.eval(), path


def _direct_embeddings(model, items, cfg, method="evenly"):
    """Mean of per-frame features of N evenly sampled frames (``method='all'``: of every
    frame), computed without our loaders."""
    n = cfg.video.test_seq_len or cfg.video.seq_len
    mean = torch.tensor(cfg.data.norm_mean)[:, None, None]
    std = torch.tensor(cfg.data.norm_std)[:, None, None]
    out = []
    for paths, _, _ in items:
        if isinstance(paths, str):
            paths = [paths]
        elif method == "evenly":
            paths = [paths[i] for i in evenly_indices(len(paths), n)]
        frames = []
        for p in paths:
            img = Image.fromarray(read_image(p)).resize((cfg.data.width, cfg.data.height),
                                                        Image.BICUBIC)
            x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
            frames.append((x - mean) / std)
        with torch.inference_mode():
            out.append(model(torch.stack(frames)).mean(0))
    return torch.stack(out)


def test_evaluator_equals_a_direct_computation(mars_root, weights, tmp_path):
    model, _ = weights
    cfg = tiny_config(mars_root[0], str(tmp_path))
    dm = VKDDataManager.from_config(cfg)
    evaluator = Evaluator.from_config(cfg, dm)
    results = evaluator.evaluate(model)["vkd_mars"]
    assert set(results) == {"I2V", "V2V"}
    items = dm.test_dataset["vkd_mars"]
    q = _direct_embeddings(model, items["query"], cfg)
    g = _direct_embeddings(model, items["gallery"], cfg)
    qi = _direct_embeddings(model, items["query_img"], cfg)
    pid = lambda xs: np.array([x[1] for x in xs])  # noqa: E731
    cam = lambda xs: np.array([x[2] for x in xs])  # noqa: E731
    gallery = items["query"] + items["gallery"]  # MARS: the query tracklets join the gallery
    for mode, queries, qf in (("V2V", items["query"], q), ("I2V", items["query_img"], qi)):
        distmat = evaluation.compute_distance_matrix(qf, torch.cat([q, g]), "cosine")
        expected = evaluation.rank_all(distmat, pid(queries), pid(gallery), cam(queries),
                                       cam(gallery))
        assert results[mode] == pytest.approx(expected, abs=1e-6), mode


def _pids_cams(items):
    return np.array([x[1] for x in items]), np.array([x[2] for x in items])


def _evaluate_keeping_features(evaluator, model):
    """evaluator.evaluate(model) and the features it ranked (one extraction)."""
    kept = {}
    features = evaluator.features

    def keep(model, name):
        kept[name] = features(model, name)
        return kept[name]

    evaluator.features = keep
    try:
        return evaluator.evaluate(model), kept
    finally:
        del evaluator.features


def test_sample_method_all_averages_every_frame(mars_root, weights, tmp_path):
    """``video.sample_method all``: a tracklet's embedding is the mean of all its frames'
    features; with more frames than ``video.seq_len`` it differs from the evenly sampled one,
    and the metrics are those of the all-frame embeddings."""
    model, _ = weights
    cfg = tiny_config(mars_root[0], str(tmp_path), "video.sample_method", "all",
                      "test.normalize_feature", "False")  # embeddings as the model gives them
    dm = VKDDataManager.from_config(cfg)
    items = dm.test_dataset["vkd_mars"]
    assert all(len(p) == 8 > cfg.video.seq_len == 4 for p, _, _ in items["query"])
    results, feats = _evaluate_keeping_features(Evaluator.from_config(cfg, dm), model)
    every = {kind: _direct_embeddings(model, items[kind], cfg, method="all")
             for kind in ("query", "gallery")}
    for kind in ("query", "gallery"):
        torch.testing.assert_close(feats["vkd_mars"][kind].emb, every[kind], rtol=1e-4,
                                   atol=1e-5)
    evenly = _direct_embeddings(model, items["query"], cfg, method="evenly")
    for i, (a, b) in enumerate(zip(every["query"], evenly)):  # 8 frames, not 4 of them
        assert not torch.allclose(a, b, rtol=1e-3, atol=1e-4), i
    g_pids, g_cams = _pids_cams(items["query"] + items["gallery"])
    q_pids, q_cams = _pids_cams(items["query"])
    distmat = evaluation.compute_distance_matrix(
        every["query"], torch.cat([every["query"], every["gallery"]]), "cosine")
    expected = evaluation.rank_all(distmat, q_pids, g_pids, q_cams, g_cams)
    assert results["vkd_mars"]["V2V"] == pytest.approx(expected, abs=1e-6)


def test_rerank_is_torchreids_re_ranking_of_the_same_distances(mars_root, weights, tmp_path):
    """``test.rerank True``: the metrics are rank_all of torchreid's re_ranking(distmat, qq,
    gg) on the distances of the same features (the MARS gallery: query tracklets first)."""
    from vkd_torchreid.compat import re_ranking

    model, _ = weights
    cfg = tiny_config(mars_root[0], str(tmp_path), "test.rerank", "True")
    dm = VKDDataManager.from_config(cfg)
    results, feats = _evaluate_keeping_features(Evaluator.from_config(cfg, dm), model)
    results, feats = results["vkd_mars"], feats["vkd_mars"]
    items = dm.test_dataset["vkd_mars"]
    gallery = torch.cat([feats["query"].emb, feats["gallery"].emb])
    g_pids, g_cams = _pids_cams(items["query"] + items["gallery"])
    plain = {}
    for mode, q_kind in (("V2V", "query"), ("I2V", "query_img")):
        q = feats[q_kind].emb
        q_pids, q_cams = _pids_cams(items[q_kind])
        dist = evaluation.compute_distance_matrix(q, gallery, "cosine")
        reranked = re_ranking(dist, evaluation.compute_distance_matrix(q, q, "cosine"),
                              evaluation.compute_distance_matrix(gallery, gallery, "cosine"))
        assert reranked.shape == dist.shape and not np.allclose(reranked, dist, atol=1e-3)
        expected = evaluation.rank_all(reranked, q_pids, g_pids, q_cams, g_cams)
        assert results[mode] == pytest.approx(expected, abs=1e-6), mode
        plain[mode] = evaluation.rank_all(dist, q_pids, g_pids, q_cams, g_cams)
    # the re-ranked metrics are not those of the plain distances: re-ranking was applied
    assert any(results[m]["mAP"] != pytest.approx(plain[m]["mAP"], abs=1e-6) for m in plain)


def test_results_json_layout_and_eval_only(capsys, mars_root, weights, tmp_path):
    _, path = weights
    save = str(tmp_path / "eval")
    argv = ["--eval-only", "--root", mars_root[0], "data.save_dir", save, *TINY,
            "model.load_weights", path, "vkd.stage", "student", "vkd.teacher_checkpoint", path]
    assert cli.main(argv) == 0
    with open(os.path.join(save, "results.json"), encoding="utf-8") as fh:
        res = json.load(fh)
    assert list(res) == ["stage", "generation", "epoch", "world_size", "vkd_mars"]
    assert (res["stage"], res["generation"], res["epoch"], res["world_size"]) == (
        "student", 0, 7, 1)
    for protocol, metrics in res["vkd_mars"].items():
        assert protocol in ("I2V", "V2V") and set(metrics) == PROTOCOL_KEYS
        assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_visrank_writes_one_ranked_list_per_query(capsys, mars_root, weights, tmp_path):
    _, path = weights
    save = str(tmp_path / "vis")
    assert cli.main(["--eval-only", "--root", mars_root[0], "data.save_dir", save, *TINY,
                     "model.load_weights", path, "test.visrank", "True",
                     "test.visrank_topk", "3"]) == 0
    queries = mars_root[1]["query"]
    for protocol in ("I2V", "V2V"):
        folder = os.path.join(save, f"visrank_vkd_mars_{protocol}")
        pngs = sorted(os.listdir(folder))
        assert len(pngs) == queries and all(p.endswith(".png") for p in pngs)
        img = np.asarray(Image.open(os.path.join(folder, pngs[0])))
        assert img.ndim == 3 and img.shape[1] > 4 * img.shape[0] // 2  # query + 3 items


def test_rank_list_renderer_borders_and_top_k():
    dist = np.array([[0.5, 0.1, 0.3, 0.1]])
    assert evaluation.top_k(dist, 0, 3) == [1, 3, 2]  # ties by column
    assert evaluation.top_k(dist, 0, 3, exclude=np.array([False, True, False, False])) == [3, 2, 0]
    red, green = np.full((8, 4, 3), 200, np.uint8), np.zeros((8, 4, 3), np.uint8)
    items = [evaluation.RankedItem(green, 0.1, True), evaluation.RankedItem(red, 0.3, False),
             evaluation.RankedItem(red, 0.5, None)]
    pic = evaluation.render_ranked_list(green, items, height=16, width=8, border=2, gap=3)
    cell = 8 + 2 * 2
    assert pic.shape == (16 + 4 + 14, cell * 4 + 3 * 4, 3)
    corner = [tuple(pic[0, (cell + 3) * r + 3]) for r in (1, 2, 3)]
    assert corner == [evaluation.rank_list.GREEN, evaluation.rank_list.RED,
                      evaluation.rank_list.GREY]
    assert tuple(pic[0, 0]) == evaluation.rank_list.BLUE


def test_normalize_feature_changes_euclidean_not_cosine(mars_root, weights, tmp_path):
    model, _ = weights
    out = {}
    for metric in ("cosine", "euclidean"):
        for norm in ("True", "False"):
            cfg = tiny_config(mars_root[0], str(tmp_path), "test.dist_metric", metric,
                              "test.normalize_feature", norm)
            evaluator = Evaluator.from_config(cfg, VKDDataManager.from_config(cfg))
            feats = evaluator.features(model, "vkd_mars")["gallery"].emb
            res = evaluator.evaluate(model)["vkd_mars"]
            out[metric, norm] = (feats.norm(dim=1),
                                 {f"{p}/{k}": v for p, m in res.items() for k, v in m.items()})
    assert torch.allclose(out["cosine", "True"][0], torch.ones(1), atol=1e-5)
    assert not torch.allclose(out["euclidean", "False"][0], torch.ones(1), atol=1e-2)
    assert out["cosine", "True"][1] == pytest.approx(out["cosine", "False"][1])
    # euclidean on normalised features ranks as cosine does; on raw features it differs
    assert out["euclidean", "True"][1] == pytest.approx(out["cosine", "True"][1], abs=1e-6)
    assert out["euclidean", "False"][1] != pytest.approx(out["euclidean", "True"][1])


def test_progress_bar_modes(mars_root, tmp_path, monkeypatch):
    assert progress_enabled("always") and not progress_enabled("never")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert progress_enabled("auto")
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert not progress_enabled("auto")
    cfg = tiny_config(mars_root[0], str(tmp_path), "test.progress", "always")
    assert EvalOptions.from_config(cfg).progress
    with pytest.raises(ValueError, match="test.progress"):
        tiny_config(mars_root[0], str(tmp_path), "test.progress", "sometimes")


def test_removed_key_says_what_to_do(capsys, mars_root, tmp_path):
    code = cli.main(["--root", mars_root[0], "data.save_dir", str(tmp_path / "x"), *TINY,
                     "train.start_epoch", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR and len(err) == 1
    assert "train.start_epoch was removed" in err[0] and "--resume" in err[0]
    config = tmp_path / "old.yaml"
    config.write_text("train:\n  start_epoch: 5\n", encoding="utf-8")
    code = cli.main(["--config-file", str(config), "--root", mars_root[0]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR and "train.start_epoch was removed" in err[0]


@pytest.mark.slow  # trains two epochs
def test_model_resume_is_resume_path(capsys, mars_root, tmp_path):
    save = str(tmp_path / "run")
    base = ["--root", mars_root[0], "data.save_dir", save, *TINY, "train.batch_size", "8",
            "sampler.num_instances", "2", "video.seq_len", "4"]
    assert cli.main([*base, "train.max_epoch", "1"]) == 0
    latest = os.path.join(save, "model", ckpt_io.LATEST_NAME)
    assert torch.load(latest, weights_only=True)["epoch"] == 1
    assert cli.main([*base, "train.max_epoch", "2", "model.resume", latest]) == 0
    with open(os.path.join(save, "losses.jsonl"), encoding="utf-8") as fh:
        epochs = [json.loads(line)["epoch"] for line in fh]
    assert epochs == [1, 2]  # continued at epoch 2, not from scratch
    code = cli.main([*base, "model.resume", str(tmp_path / "none.pth")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR and "model.resume" in err[-1] and "none.pth" in err[-1]


def test_trust_checkpoint_is_a_config_key(mars_root, weights, tmp_path):
    assert not tiny_config(mars_root[0], str(tmp_path)).model.trust_checkpoint  # off by default
    cfg = tiny_config(mars_root[0], str(tmp_path), "model.trust_checkpoint", "True")
    assert cfg.model.trust_checkpoint is True
    parser = cli.add_arguments(__import__("argparse").ArgumentParser())
    for flag in ([], ["--trust-checkpoint"]):  # the flag sets the key; without it, it stays off
        args = parser.parse_args([*flag, "--root", mars_root[0]])
        assert cli.config_from_args(args).model.trust_checkpoint is bool(flag)


def test_one_embedder_serves_the_evaluator_and_its_callers(mars_root, weights, tmp_path):
    """The Evaluator's features are the Embedder's; the Embedder embeds items, image files
    and pooled frames the same way."""
    model, _ = weights
    cfg = tiny_config(mars_root[0], str(tmp_path), "test.normalize_feature", "True",
                      "video.test_seq_len", "0")
    dm = VKDDataManager.from_config(cfg)
    evaluator = Evaluator.from_config(cfg, dm)
    embedder = evaluator.embedder
    assert embedder.seq_len == cfg.video.seq_len == dm.sampling.test_seq_len  # 0: seq_len
    items = dm.test_dataset["vkd_mars"]
    with torch.inference_mode():
        feats = evaluator.features(model, "vkd_mars")
        gallery = embedder.items(model, items["gallery"])
        frames = [p for p in items["gallery"][0][0]][:3]
        per_image = embedder.images(model, [read_image(p) for p in frames])
        per_path = embedder.images(model, frames, lambda p, i: read_image(p))
        as_items = embedder.items(model, [(p, -1, -1) for p in frames], tracklets=False)
    assert torch.allclose(embedder.normalized(gallery), feats["gallery"].emb, atol=1e-6)
    assert torch.allclose(feats["gallery"].emb.norm(dim=1), torch.ones(len(gallery)))
    assert torch.equal(per_image, per_path) and torch.allclose(per_image, as_items, atol=1e-5)
    pooled = embedder.pool(per_image, [1, 2])
    assert torch.allclose(pooled, torch.stack([per_image[0], per_image[1:].mean(0)]))
    assert embedder.items(model, []).shape == (0, model.feature_dim)
