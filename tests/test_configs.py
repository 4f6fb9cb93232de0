"""Every file in configs/ loads, validates, and builds its model(s) and data manager."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from vkd_torchreid.config import build_config, get_default_config, merge_from_file
from vkd_torchreid.data.manager import build_datamanager
from vkd_torchreid.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
#: Files named ``_*.yaml`` are partial bases (no dataset, no teacher): experiments inherit them.
EXPERIMENTS = [p for p in CONFIGS if not os.path.basename(p).startswith("_")]
BASES = [p for p in CONFIGS if os.path.basename(p).startswith("_")]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """All four layouts under one data.root, with enough identities for every P x K."""
    from vkd_torchreid.data.synthetic import write_synthetic

    root = str(tmp_path_factory.mktemp("all_layouts"))
    for name in ("vkd_mars", "vkd_duke", "vkd_veri", "vkd_atrw"):
        write_synthetic(name, root, ids=40, cams=2, tracklets=1, frames=2, seed=1,
                        height=32, width=16)
    return root


def test_there_is_a_config_per_paper_experiment():
    names = {os.path.basename(p)[:-5] for p in CONFIGS}
    for ds in ("mars", "duke", "veri"):
        assert {f"teacher_{ds}_r50", f"vkd_{ds}_r50"} <= names
    for arch in ("r34", "r101", "r50bam", "densenet121", "mobilenetv2"):
        assert {f"teacher_mars_{arch}", f"vkd_mars_{arch}"} <= names
    for arch in ("r50", "r101"):
        assert {f"teacher_atrw_{arch}", f"vkd_atrw_{arch}"} <= names
    for pair in ("r101_to_r34", "r101_to_r50bam", "r101_to_mobilenetv2", "r101_to_r50",
                 "r50_to_r34"):
        assert f"vkd_mars_{pair}" in names
    for ablation in ("temporal", "mse", "no_kd", "no_dp", "no_tr", "no_ce"):
        assert f"vkd_mars_r50_{ablation}" in names
    assert "demo" in names


@pytest.mark.parametrize("path", BASES, ids=[os.path.basename(p) for p in BASES])
def test_partial_bases_merge_with_known_keys_and_are_inherited(path):
    cfg = merge_from_file(get_default_config(), path)
    assert cfg.vkd.stage in ("teacher", "student")
    children = [p for p in EXPERIMENTS
                if f"_BASE_: {os.path.basename(path)}" in Path(p).read_text(encoding="utf-8")]
    assert children, f"no experiment inherits {path}"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[os.path.basename(p) for p in EXPERIMENTS])
def test_config_loads_validates_and_builds(path, synthetic_root, tmp_path):
    cfg = build_config(path, ["data.root", synthetic_root, "data.save_dir", str(tmp_path),
                              "model.pretrained", "False", "data.workers", "0"])
    dm = build_datamanager(cfg)
    assert dm.num_train_pids > 0
    batch = next(iter(dm.train_loader.batch_sampler))
    assert len(batch) == cfg.train.batch_size
    for name in cfg.data.targets:
        assert dm.test_loader[name]
    model = build_model(cfg.model.name, dm.num_train_pids, pretrained=False)
    assert model.num_classes == dm.num_train_pids
    if cfg.vkd.stage == "student":
        assert cfg.vkd.teacher_checkpoint
        if cfg.vkd.teacher_arch:
            teacher = build_model(cfg.vkd.teacher_arch, dm.num_train_pids, pretrained=False)
            assert teacher.arch == cfg.vkd.teacher_arch != model.arch
