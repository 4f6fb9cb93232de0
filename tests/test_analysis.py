"""The analysis tools (explain, camera-bias, gallery-curve, rank-list) end to end on a tiny
trained teacher/student pair, checked against independent computations."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vkd_torchreid import cli, evaluation
from vkd_torchreid.apps.analysis.camera_bias import probe_accuracy, same_camera_share
from vkd_torchreid.apps.analysis.rank_list import choose_queries
from vkd_torchreid.apps.analysis.session import AnalysisSession
from vkd_torchreid.config import build_config
from vkd_torchreid.engine import build
from vkd_torchreid.models import build_model
from vkd_torchreid.synthetic import mask_file, render, write_synthetic
from vkd_torchreid.utils import checkpoint as ckpt_io

from conftest import TINY, require_extra

SIZE = ["data.height", "64", "data.width", "32"]  # layer4 maps of 4 x 2 cells


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A MARS-layout world with person masks, a teacher (2 epochs) and its student (1)."""
    base = tmp_path_factory.mktemp("analysis")
    root, masks = str(base / "data"), str(base / "masks")
    write_synthetic("vkd_mars", root, ids=12, cams=3, tracklets=2, frames=12, seed=0,
                    train_ids=5, masks=masks)
    opts = ["data.root", root, *TINY, *SIZE, "train.batch_size", "8",
            "sampler.num_instances", "2", "video.seq_len", "4"]
    teacher_dir, student_dir = str(base / "teacher"), str(base / "student")
    build.train(build_config("", [*opts, "data.save_dir", teacher_dir, "vkd.stage", "teacher"]))
    teacher = os.path.join(teacher_dir, "model", ckpt_io.LATEST_NAME)
    build.train(build_config("", [*opts, "data.save_dir", student_dir, "vkd.stage", "student",
                                  "train.max_epoch", "1", "vkd.teacher_checkpoint", teacher]))
    student = os.path.join(student_dir, "model", ckpt_io.LATEST_NAME)
    # test-time settings of the tools: the evaluation's 8 evenly sampled frames
    tool_opts = ["data.root", root, "data.workers", "0", "use_gpu", "False", *SIZE,
                 "test.batch_size", "8", "video.test_seq_len", "8"]
    return {"root": root, "masks": masks, "teacher": teacher, "student": student,
            "opts": tool_opts, "base": str(base)}


def _cli(pair, command, out, *args):
    return cli.main([command, "--weights", pair["teacher"], "--weights", pair["student"],
                     "--label", "teacher", "--label", "student", "--output", out, *args,
                     *pair["opts"]])


def _json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _evaluator_i2v(pair, weights, *opts):
    """Our Evaluator's I2V metrics of ``weights`` (an independent path: its own loaders,
    batched extraction and pooling)."""
    cfg = build_config("", [*pair["opts"], "data.save_dir", os.path.join(pair["base"], "ev"),
                            "model.name", "vkd_resnet18", "model.load_weights", weights, *opts])
    job = build.prepare_evaluation(cfg)
    with torch.inference_mode():
        return job.evaluator.evaluate(job.model.eval())["vkd_mars"]["I2V"]


@pytest.mark.slow  # the tiny trained pair
def test_gallery_curve_points_equal_the_evaluator(pair, tmp_path):
    out = str(tmp_path / "curve")
    assert _cli(pair, "gallery-curve", out) == 0
    curve = _json(os.path.join(out, "gallery_curve.json"))
    assert [n["label"] for n in curve["networks"]] == ["teacher", "student"]
    for net, weights in zip(curve["networks"], (pair["teacher"], pair["student"])):
        points = {p["frames"]: p for p in net["points"]}
        assert list(points) == [1, 2, 4, 8, "all"]
        for frames, opts in ((8, ()), ("all", ("video.sample_method", "all"))):
            expected = _evaluator_i2v(pair, weights, *opts)
            for metric in ("rank1", "mAP", "mAP_mars"):
                assert points[frames][metric] == pytest.approx(expected[metric], abs=1e-6)
    # 12-frame tracklets: 8 evenly sampled frames are not all of them, and it shows
    assert any(p[8]["mAP"] != p["all"]["mAP"] for p in
               ({q["frames"]: q for q in n["points"]} for n in curve["networks"]))
    with Image.open(os.path.join(out, "gallery_curve.png")) as img:
        assert img.size[0] > 500 and img.size[1] > 250


@pytest.mark.slow  # the tiny trained pair
def test_gallery_curve_random_draws_and_one_extraction_per_network(pair, tmp_path):
    out = str(tmp_path / "draws")
    cfg = build_config("", pair["opts"])
    from vkd_torchreid.apps.analysis.gallery_curve import gallery_curve

    session = AnalysisSession(cfg, [pair["teacher"], pair["student"]], output=out)
    evenly = gallery_curve(session, (2, "all"))
    # every gallery frame once per network, the query frames (MARS: in the gallery) included
    frames = sum(len(it[0]) for it in session.gallery_items("gallery"))
    assert session.extracted() == {"teacher": frames, "student": frames}
    drawn = gallery_curve(session, (2, "all"), draws=3, seed=1)
    assert drawn["networks"][0]["points"][0]["draws"] == 3
    assert drawn["networks"][0]["points"][0]["mAP_std"] >= 0
    for a, b in zip(evenly["networks"], drawn["networks"]):  # 'all' is not drawn
        assert a["points"][1] == b["points"][1]
    # a second session on the same output folder reads every frame from the cache
    session.save()
    again = AnalysisSession(cfg, [pair["teacher"], pair["student"]], output=out)
    assert gallery_curve(again, (2, "all")) == evenly
    assert again.extracted() == {"teacher": 0, "student": 0}
    # other input settings: the cache is for other features and is not used
    smaller = build_config("", [*pair["opts"], "data.height", "32", "data.width", "16"])
    other = AnalysisSession(smaller, [pair["teacher"]], output=out)
    gallery_curve(other, (2,))
    assert other.extracted()["teacher"] > 0


@pytest.mark.slow  # the tiny trained pair
def test_camera_probe_beats_the_majority_rate(pair, tmp_path):
    out = str(tmp_path / "cam")
    assert _cli(pair, "camera-bias", out, "--k", "5") == 0
    result = _json(os.path.join(out, "camera_bias.json"))
    assert result["cameras"] == 3 and 0 < result["majority_rate"] < 0.5
    for net in result["networks"]:
        # the cameras tint the frames and light them differently: easy to read off
        assert net["probe_accuracy"] > result["majority_rate"] + 0.2
        assert 0 <= net["same_camera_share"] <= 1 and 0 <= net["chance_share"] <= 1
    with Image.open(os.path.join(out, "camera_bias.png")) as img:
        assert img.size[0] > 500


def test_same_camera_share_by_hand():
    # query pid 1 camera 1; gallery: own identity (left out), two strangers from camera 1,
    # two from camera 2, one junk detection (pid -1, left out)
    g_pids = np.array([1, 2, 3, 4, 5, -1])
    g_cams = np.array([1, 1, 2, 1, 2, 1])
    dist = np.array([[0.0, 0.1, 0.2, 0.3, 0.4, 0.05]])
    out = same_camera_share(dist, np.array([1]), g_pids, np.array([1]), g_cams, k=2)
    assert out["share"] == pytest.approx(0.5)  # nearest strangers: pid 2 (cam 1), pid 3 (cam 2)
    assert out["chance"] == pytest.approx(2 / 4)
    out = same_camera_share(dist, np.array([1]), g_pids, np.array([1]), g_cams, k=1)
    assert out["share"] == 1.0


def test_probe_separates_blobs_and_fails_on_noise():
    rng = np.random.default_rng(0)
    cams = np.repeat([0, 1, 2], 40)
    centres = rng.normal(size=(3, 16)) * 4
    x = torch.as_tensor(centres[cams] + rng.normal(size=(120, 16)), dtype=torch.float32)
    assert probe_accuracy(x[::2], cams[::2], x[1::2], cams[1::2]) == 1.0
    noise = torch.as_tensor(rng.normal(size=(120, 16)), dtype=torch.float32)
    assert probe_accuracy(noise[::2], cams[::2], noise[1::2], cams[1::2]) < 0.6


def _grad_cam_by_hand(model, x):
    """Grad-CAM of the top logit at the backbone's output, written out: channel weights are
    the mean gradients, the map their ReLU'd weighted sum, scaled to [0, 1], upsampled
    bilinearly to the input and scaled to [0, 1] again."""
    import cv2

    fmap = model.backbone(x).detach().requires_grad_(True)
    f = torch.nn.functional.adaptive_avg_pool2d(fmap, 1).flatten(1)
    logits = model.classifier(model.bnneck(f))
    top = logits.max(1).values.sum()
    (grads,) = torch.autograd.grad(top, fmap)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * fmap).sum(1)).detach().numpy()
    out = []
    for c in cam:
        c = c - c.min()
        c = c / (1e-7 + c.max())
        c = cv2.resize(c.astype(np.float32), (x.shape[3], x.shape[2]))
        out.append((c - c.min()) / (1e-7 + (c - c.min()).max()))  # [0, 1] at input size
    return np.stack(out)


@pytest.mark.slow  # the tiny trained pair
def test_explain_maps_and_foreground_share(pair, tmp_path):
    require_extra("pytorch_grad_cam", "analysis")
    out = str(tmp_path / "explain")
    assert _cli(pair, "explain", out, "--frames", "5", "--masks", pair["masks"]) == 0
    result = _json(os.path.join(out, "explain.json"))
    assert len(result["frames"]) == 5
    maps = np.load(os.path.join(out, "explain_maps.npz"))["maps"].astype(np.float32)
    masks = []
    for f in result["frames"]:  # each frame's mask, at the input size (64 x 32)
        rel = os.path.relpath(f["path"], pair["root"])
        with Image.open(mask_file(pair["masks"], rel)) as m:
            masks.append(np.asarray(m.resize((32, 64), Image.NEAREST)) > 127)
    numeric = []
    for n, net in enumerate(result["networks"]):
        assert net["target_layer"] == "backbone.layer4"
        shares = net["foreground_share"]
        assert len(shares) == 5
        for j, share in enumerate(shares):
            mass = maps[j, n].sum()
            if share is None:  # an all-zero map (no positive evidence) has no share
                assert mass == 0
                continue
            numeric.append(share)
            assert 0 <= share <= 1
            assert share == pytest.approx(maps[j, n][masks[j]].sum() / mass, abs=1e-2)
    assert numeric, "every Grad-CAM map was zero"
    assert 0 < result["mean_mask_area"] < 1
    # the maps are Grad-CAM's: equal to a computation by hand on the same frames
    session = AnalysisSession(build_config("", pair["opts"]), [pair["student"]])
    from vkd_torchreid.data.io import read_image

    x = torch.stack([session.dm.preprocess_pil_img(read_image(f["path"]))
                     for f in result["frames"]])
    model = session.networks[0].model.eval()
    with torch.enable_grad():
        expected = _grad_cam_by_hand(model, x)
    np.testing.assert_allclose(maps[:, 1], expected, atol=2e-3)  # float16 on disk
    with Image.open(os.path.join(out, "explain.png")) as img:
        assert img.size[0] > 150 and img.size[1] > 400


@pytest.mark.slow  # the tiny trained pair
def test_explain_without_a_mask_names_the_file(pair, tmp_path, capsys):
    require_extra("pytorch_grad_cam", "analysis")
    empty = tmp_path / "no_masks"
    empty.mkdir()
    assert _cli(pair, "explain", str(tmp_path / "x"), "--frames", "1",
                "--masks", str(empty)) == 2
    err = capsys.readouterr().err
    assert "error: --masks" in err and "no mask for" in err and ".png" in err


@pytest.mark.slow  # the tiny trained pair
def test_rank_list_equals_a_direct_ranking(pair, tmp_path):
    out = str(tmp_path / "ranks")
    assert _cli(pair, "rank-list", out, "--query-index", "0", "3", "--k", "4") == 0
    result = _json(os.path.join(out, "rank_list.json"))
    assert [q["index"] for q in result["queries"]] == [0, 3]
    # independently: the Evaluator's features, MARS' query tracklets put back in the gallery
    cfg = build_config("", [*pair["opts"], "data.save_dir", str(tmp_path / "ev"),
                            "model.load_weights", pair["student"]])
    job = build.prepare_evaluation(cfg)
    with torch.inference_mode():
        feats = job.evaluator.features(job.model.eval(), "vkd_mars")
    q = feats["query_img"]
    g_items = job.evaluator.datamanager.gallery_items("vkd_mars", "gallery")
    from vkd_torchreid.engine.extract import concat

    g = concat(feats["query"], feats["gallery"]) if len(g_items) > len(
        feats["gallery"].pids) else feats["gallery"]
    dist = evaluation.compute_distance_matrix(q.emb, g.emb, metric=cfg.test.dist_metric)
    for query in result["queries"]:
        i = query["index"]
        junk = (g.pids == q.pids[i]) & (g.camids == q.camids[i])
        order = [c for c in np.argsort(dist[i], kind="stable") if not junk[c]][:4]
        student = query["networks"][1]
        assert student["label"] == "student"
        cols = [r["gallery_index"] for r in student["ranked"]]
        # the same top 4 at the same distances (features pooled another way may swap items
        # whose distances tie to float precision, never others)
        np.testing.assert_allclose([r["distance"] for r in student["ranked"]],
                                   dist[i, order], atol=1e-5)
        np.testing.assert_allclose(dist[i, cols], dist[i, order], atol=1e-5)
        assert not junk[cols].any()
        assert [r["correct"] for r in student["ranked"]] == [
            bool(g.pids[c] == q.pids[i]) for c in cols]
    with Image.open(os.path.join(out, "rank_list.png")) as img:
        assert img.size[1] > 4 * 128  # 2 queries x 2 networks


@pytest.mark.slow  # the tiny trained pair
def test_rank_list_bad_queries(pair, tmp_path, capsys):
    assert _cli(pair, "rank-list", str(tmp_path / "r"), "--query-index", "999") == 2
    assert "--query-index [999]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no query"):
        choose_queries(0, 5, [], 0)


@pytest.mark.slow  # the tiny trained pair
def test_weights_of_another_architecture_than_the_config(pair, tmp_path, capsys):
    bare = str(tmp_path / "bare.pth")  # a bare state dict: no declared architecture
    torch.save(build_model("vkd_resnet18", 5, pretrained=False).state_dict(), bare)
    code = cli.main(["gallery-curve", "--weights", bare, "--output", str(tmp_path / "o"),
                     *pair["opts"], "model.name", "vkd_resnet50"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and bare in err and "vkd_resnet50" in err


@pytest.mark.slow  # the tiny trained pair
def test_camera_bias_refuses_a_dataset_without_cameras(pair, tmp_path, capsys):
    root = str(tmp_path / "atrw")
    write_synthetic("vkd_atrw", root, ids=4, cams=3, tracklets=1, frames=2, seed=0)
    code = cli.main(["camera-bias", "--weights", pair["student"], "--output",
                     str(tmp_path / "o"), *pair["opts"], "data.root", root,
                     "data.sources", "['vkd_atrw']", "data.targets", "['vkd_atrw']"])
    assert code == 2
    assert "vkd_atrw has no camera ids" in capsys.readouterr().err


@pytest.mark.slow  # the tiny trained pair
def test_synthetic_masks_follow_the_frames(pair):
    frames, masks = render(0, 3, 2, False, 1, 4, 64, 32, with_masks=True)
    assert np.array_equal(frames, render(0, 3, 2, False, 1, 4, 64, 32))
    assert masks.shape == (4, 64, 32) and masks.dtype == bool and 0.1 < masks.mean() < 0.8
    jpgs = glob.glob(os.path.join(pair["root"], "mars", "bbox_*", "*", "*.jpg"))
    for jpg in jpgs[:20]:
        rel = os.path.relpath(jpg, pair["root"])
        with Image.open(mask_file(pair["masks"], rel)) as m:
            assert m.mode == "L" and m.size == (64, 128)
    assert len(glob.glob(os.path.join(pair["masks"], "mars", "bbox_*", "*", "*.png"))) == \
        len(jpgs)


@pytest.mark.slow  # three large backbones
@pytest.mark.parametrize("arch,layer", [("vkd_resnet50_bam", "backbone.layer4"),
                                        ("vkd_densenet121", "backbone.norm5"),
                                        ("vkd_mobilenetv2", "backbone.18")])
def test_grad_cam_runs_on_every_family(arch, layer):
    require_extra("pytorch_grad_cam", "analysis")
    from vkd_torchreid.apps.analysis.explain import grad_cam, target_layer_name

    torch.manual_seed(0)
    model = build_model(arch, 5, pretrained=False).eval()
    x = torch.randn(2, 3, 64, 32)
    maps, top = grad_cam(model, x)
    assert target_layer_name(model) == layer
    assert maps.shape == (2, 64, 32) and maps.min() >= 0 and maps.max() <= 1
    with torch.no_grad():  # the explained class is each frame's top logit
        assert top.tolist() == model.forward_features(x)[1].argmax(1).tolist()
    # a channels-last network (train.channels_last) gives the same maps
    last, _ = grad_cam(model.to(memory_format=torch.channels_last), x)
    np.testing.assert_allclose(last, maps, atol=1e-4)
