"""``vkd-reid search``: a query against a gallery folder of tracklets, then against the saved
index; the right tracklet first, a ranked-list picture, clear errors."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from vkd_torchreid import cli
from vkd_torchreid.models import build_model
from vkd_torchreid.utils import checkpoint as ckpt_io

OPTS = ["data.height", "32", "data.width", "16", "use_gpu", "False", "model.name",
        "vkd_resnet18"]


@pytest.fixture(scope="module")
def world(mars_root, tmp_path_factory):
    """A gallery folder of 6 synthetic MARS tracklets (<pid>_<camid>_<n>) and weights."""
    from vkd_torchreid.data.mars import Mars

    root = tmp_path_factory.mktemp("search")
    splits = Mars.load(mars_root[0])
    gallery = os.path.join(root, "gallery")
    items = splits.gallery[:6]
    for n, (paths, pid, cam, *_) in enumerate(items):
        folder = os.path.join(gallery, f"{pid}_{cam}_{n}")
        os.makedirs(folder)
        for p in paths:
            shutil.copy(p, folder)
    torch.manual_seed(0)
    model = build_model("vkd_resnet18", 4, pretrained=False)
    weights = os.path.join(root, "w.pth.tar")
    ckpt_io.atomic_save({"state_dict": model.state_dict(),
                         "meta": {"arch": model.arch, "num_classes": 4}}, weights)
    return str(root), gallery, weights, items


def test_search_a_gallery_then_its_saved_index(world, capsys):
    root, gallery, weights, items = world
    query = items[2][0][0]  # a frame of the third tracklet: that tracklet must come first
    index, png = os.path.join(root, "index"), os.path.join(root, "list.png")
    argv = ["search", "--config-file", "", "--weights", weights, "--query", query, "--k", "3",
            "--output", png]
    assert cli.main([*argv, "--gallery", gallery, "--save-index", index, *OPTS]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[2].split()
    pid, cam = items[2][1], items[2][2]
    assert first[0] == "1" and first[2] == f"{pid}_{cam}_2", out
    assert os.path.isfile(png) and os.path.isfile(os.path.join(index, "index.json"))
    assert cli.main([*argv, "--index", index, *OPTS]) == 0
    again = capsys.readouterr().out
    assert again.splitlines()[1].split()[2] == f"{pid}_{cam}_2"


def test_search_errors_are_one_line(world, capsys, tmp_path):
    _, gallery, weights, items = world
    argv = ["search", "--config-file", "", "--weights", weights, "--query", items[0][0][0]]
    assert cli.main([*argv, "--gallery", str(tmp_path), *OPTS]) == 2
    assert "holds no tracklet" in capsys.readouterr().err
    assert cli.main([*argv, "--gallery", str(tmp_path / "none"), *OPTS]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert cli.main([*argv, "--index", str(tmp_path), *OPTS]) == 2
    assert "no gallery index" in capsys.readouterr().err


def _one_error_line(err: str, *parts: str) -> str:
    """The single ``error:`` line of ``err``, which must hold every one of ``parts``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and all(p in lines[0] for p in parts), (parts, err)
    return lines[0]


def test_index_of_other_weights_or_settings_is_refused(world, capsys, tmp_path):
    root, gallery, weights, items = world
    index = str(tmp_path / "index")
    argv = ["search", "--config-file", "", "--query", items[2][0][0], "--k", "3",
            "--output", str(tmp_path / "list.png")]
    assert cli.main([*argv, "--weights", weights, "--gallery", gallery, "--save-index", index,
                     *OPTS]) == 0
    capsys.readouterr()
    with open(os.path.join(index, "index.json"), encoding="utf-8") as fh:
        recorded = json.load(fh)["network"]
    assert recorded["arch"] == "vkd_resnet18" and recorded["height"] == 32
    assert len(recorded["weights_sha256"]) == 64
    # other weights of the same architecture and size: the top-1 would silently change
    torch.manual_seed(1)
    other = str(tmp_path / "other.pth.tar")
    ckpt_io.atomic_save({"state_dict": build_model("vkd_resnet18", 4, pretrained=False)
                         .state_dict(), "meta": {"arch": "vkd_resnet18", "num_classes": 4}},
                        other)
    assert cli.main([*argv, "--weights", other, "--index", index, *OPTS]) == 2
    line = _one_error_line(capsys.readouterr().err, index, "another network", "weights_sha256",
                           recorded["weights_sha256"][:12])
    assert "height" not in line  # only what differs
    # the same weights with another input size or frame count
    assert cli.main([*argv, "--weights", weights, "--index", index, *OPTS,
                     "data.height", "64", "video.test_seq_len", "2"]) == 2
    _one_error_line(capsys.readouterr().err, "height 32 vs 64", "test_frames")
    assert cli.main([*argv, "--weights", weights, "--index", index, *OPTS]) == 0  # the same
    capsys.readouterr()
    # an index that records no network cannot be checked: refused too
    del recorded
    with open(os.path.join(index, "index.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    meta.pop("network")
    with open(os.path.join(index, "index.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    assert cli.main([*argv, "--weights", weights, "--index", index, *OPTS]) == 2
    _one_error_line(capsys.readouterr().err, index, "does not record the network")


def test_weights_of_another_architecture_are_refused(world, capsys, tmp_path):
    """As ``export`` does: the checkpoint declares vkd_mobilenetv2, the config vkd_resnet18."""
    _, gallery, _, items = world
    other = str(tmp_path / "mobilenet.pth.tar")
    ckpt_io.atomic_save({"state_dict": build_model("vkd_mobilenetv2", 4, pretrained=False)
                         .state_dict(), "meta": {"arch": "vkd_mobilenetv2", "num_classes": 4}},
                        other)
    out = tmp_path / "list.png"
    assert cli.main(["search", "--config-file", "", "--weights", other, "--query",
                     items[0][0][0], "--gallery", gallery, "--output", str(out), *OPTS]) == 2
    _one_error_line(capsys.readouterr().err, other, "vkd_mobilenetv2", "vkd_resnet18")
    assert not out.exists()


@pytest.mark.parametrize("text", ['{"format": 1, "backend": "exact",', "", '{"format": 1 x}'])
def test_broken_index_json_is_one_line_naming_it(world, capsys, tmp_path, text):
    _, _, weights, items = world
    index = tmp_path / "index"
    index.mkdir()
    (index / "index.json").write_text(text)
    assert cli.main(["search", "--config-file", "", "--weights", weights, "--query",
                     items[0][0][0], "--index", str(index), *OPTS]) == 2
    line = _one_error_line(capsys.readouterr().err, str(index / "index.json"))
    assert ("line 1 column" in line) if text else ("empty file" in line)
