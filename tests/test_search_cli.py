"""``vkd-reid search``: a query against a gallery folder of tracklets, then against the saved
index; the right tracklet first, a ranked-list picture, clear errors."""
from __future__ import annotations

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
