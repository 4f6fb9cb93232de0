"""Every file in configs/ loads, validates, and builds its model(s) and data manager."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from vkd_torchreid.apps import paper_configs
from vkd_torchreid.apps.demo_config import DEMO_CONFIG
from vkd_torchreid.config import build_config, get_default_config, merge_from_file
from vkd_torchreid.data.base import MODES
from vkd_torchreid.data.manager import build_datamanager
from vkd_torchreid.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
#: Files named ``_*.yaml`` are partial bases (no dataset, no teacher): experiments inherit them.
EXPERIMENTS = [p for p in CONFIGS if not os.path.basename(p).startswith("_")]
BASES = [p for p in CONFIGS if os.path.basename(p).startswith("_")]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """All six layouts under one data.root, with enough identities for every P x K."""
    from vkd_torchreid.synthetic import write_synthetic

    root = str(tmp_path_factory.mktemp("all_layouts"))
    for name in ("vkd_mars", "vkd_duke", "vkd_veri", "vkd_atrw", "vkd_ilidsvid", "vkd_prid2011"):
        write_synthetic(name, root, ids=40, cams=2, tracklets=1, frames=2, seed=1,
                        height=32, width=16)
    return root


def test_there_is_a_config_per_paper_experiment():
    """Every experiment of the reference's commands.txt, plus ATRW, ablations and the demo."""
    names = {os.path.basename(p)[:-5] for p in CONFIGS}
    for ds in ("mars", "duke", "veri"):
        for arch in ("r18", "r34", "r50", "r101", "r50bam", "densenet121", "mobilenetv2"):
            assert f"teacher_{ds}_{arch}" in names
        for arch in ("r34", "r50", "r101", "r50bam", "densenet121", "mobilenetv2"):
            assert f"vkd_{ds}_{arch}" in names
        for pair in ("r101_to_r34", "r101_to_r50bam", "r101_to_mobilenetv2", "r101_to_r50",
                     "r50_to_r34"):
            assert f"vkd_{ds}_{pair}" in names
        assert f"control_{ds}_r50" in names
    for arch in ("r50", "r101"):
        assert {f"teacher_atrw_{arch}", f"vkd_atrw_{arch}"} <= names
    for ablation in ("temporal", "mse", "no_kd", "no_dp", "no_tr", "no_ce", "no_reinit",
                     "multiview"):
        assert f"vkd_mars_r50_{ablation}" in names
    assert "demo" in names
    for ds in ("ilidsvid", "prid2011"):  # no reference numbers: MARS's recipe, said so
        for name in (f"teacher_{ds}_r50", f"vkd_{ds}_r50"):
            assert name in names
            lines = Path(REPO, "configs", f"{name}.yaml").read_text(encoding="utf-8")
            header = " ".join(line[2:] for line in lines.splitlines() if line.startswith("# "))
            assert "report no numbers" in header and "schedule is MARS's" in header
            mars, cfg = _load(name.replace(ds, "mars")), _load(name)
            assert all(cfg[k] == mars[k] for k in ("train", "video", "sampler", "loss")), name
            assert {k for k in cfg.vkd if cfg.vkd[k] != mars.vkd[k]} <= {"teacher_checkpoint"}
            assert list(cfg.data.sources) == [f"vkd_{ds}"] and cfg.data.split_id == 0


def test_generated_configs_are_the_table():
    """configs/ holds exactly what the table renders (re-run tools/make_configs.py)."""
    for name, description, cfg in paper_configs.experiments():
        path = os.path.join(REPO, "configs", f"{name}.yaml")
        assert Path(path).read_text(encoding="utf-8") == paper_configs.render(description, cfg), (
            f"{path} differs from vkd_torchreid/apps/paper_configs.py; run tools/make_configs.py")


def _load(name, *opts):
    return build_config(os.path.join(REPO, "configs", f"{name}.yaml"), list(opts))


@pytest.mark.parametrize("ds", ["mars", "duke", "veri"])
def test_paper_configs_are_the_reference(ds):
    """Reference views everywhere, the reference's dataset reading, schedules of
    commands.txt, cross-distillation from the student's own stage-1 run, the control."""
    for name in (p for p in map(lambda p: os.path.basename(p)[:-5], EXPERIMENTS)
                 if p.startswith(("vkd_", "control_")) and f"_{ds}_" in p):
        cfg = _load(name)
        assert cfg.vkd.view_strategy == ("multiview" if name.endswith("_multiview") else
                                          "temporal" if name.endswith("_temporal") else
                                          "multiview_random"), name
        assert (cfg.train.max_epoch, list(cfg.train.stepsize)) == (500, [300, 450]), name
        assert (cfg.train.batch_size, cfg.sampler.num_instances) == (48, 4), name
    for name in (f"teacher_{ds}_{a}" for a in paper_configs.TEACHERS):
        cfg = _load(name)
        expected = ([200, 250] if ds == "veri" else [50, 100, 150, 200, 250]
                    if name.endswith("_r18") else [100, 200])
        assert list(cfg.train.stepsize) == expected and cfg.train.max_epoch == 300, name
        assert (cfg.train.batch_size, cfg.video.seq_len) == ((72, 1) if ds == "veri" else (32, 8))
    for name in (n for n, _, _ in paper_configs.experiments() if f"_{ds}_" in n):
        cfg = _load(name)
        assert cfg.data.duke_tracklets == ("reference" if ds == "duke" else "folder"), name
        assert cfg.data.veri_query_track == ("first" if ds == "veri" else "longest"), name
        assert cfg.data.veri_image_gallery == ("tracks" if ds == "veri" else "name_test"), name
    for t, s in paper_configs.CROSS:
        cfg = _load(f"vkd_{ds}_{t}_to_{s}")
        assert cfg.model.name == paper_configs.ARCHS[s]
        assert cfg.vkd.teacher_arch == paper_configs.ARCHS[t]
        assert cfg.vkd.student_checkpoint == _load(f"teacher_{ds}_{s}").data.save_dir + \
            "/model/latest.pth.tar"
        assert cfg.vkd.teacher_checkpoint == _load(f"teacher_{ds}_{t}").data.save_dir + \
            "/model/latest.pth.tar"
    control, student = _load(f"control_{ds}_r50"), _load(f"vkd_{ds}_r50")
    assert (control.vkd.alpha, control.vkd.beta) == (0.0, 0.0)
    differ = [k for k in ("vkd", "train", "model", "video", "sampler", "loss")
              if control[k] != student[k]]
    assert differ == ["vkd"]
    assert {k for k in control.vkd if control.vkd[k] != student.vkd[k]} == {"alpha", "beta"}


def _named_by_file(name):
    """(dataset, model arch, teacher arch or None, stage) that a paper config's file name
    states: ``<teacher|vkd|control>_<dataset>_<arch>[_to_<arch>][_<ablation>]``."""
    kind, ds, *rest = name.split("_")
    if "to" in rest:  # cross-distillation: <teacher>_to_<student>
        i = rest.index("to")
        return (ds, paper_configs.ARCHS[rest[i + 1]], paper_configs.ARCHS[rest[i - 1]],
                "student")
    return (ds, paper_configs.ARCHS[rest[0]], None,
            "teacher" if kind == "teacher" else "student")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[os.path.basename(p) for p in EXPERIMENTS])
def test_config_loads_and_validates(path, tmp_path):
    cfg = build_config(path, ["data.save_dir", str(tmp_path)], [DEMO_CONFIG])
    name = os.path.basename(path)[:-5]
    if name in ("demo", "study"):  # the CPU demo and the study: synthetic MARS, a ResNet-18
        assert (list(cfg.data.sources), cfg.model.name) == (["vkd_mars"], "vkd_resnet18")
        assert cfg.demo.enabled and cfg.vkd.stage == "teacher"
        return
    if name == "base":  # what every experiment shares: the reference's ResNet-50 on MARS
        assert (list(cfg.data.sources), cfg.model.name) == (["vkd_mars"], "vkd_resnet50")
        assert (cfg.train.optim, cfg.train.lr, cfg.test.dist_metric) == ("adam", 1e-4, "cosine")
        return
    ds, arch, teacher_arch, stage = _named_by_file(name)
    assert list(cfg.data.sources) == list(cfg.data.targets) == [f"vkd_{ds}"], name
    assert cfg.model.name == arch and cfg.vkd.stage == stage, name
    if stage == "student":
        assert cfg.vkd.teacher_arch == (teacher_arch or ""), name
        token = {v: k for k, v in paper_configs.ARCHS.items()}[teacher_arch or arch]
        assert cfg.vkd.teacher_checkpoint == f"log/teacher_{ds}_{token}/model/latest.pth.tar"


@pytest.mark.parametrize("path", BASES, ids=[os.path.basename(p) for p in BASES])
def test_partial_bases_merge_with_known_keys_and_are_inherited(path):
    cfg = merge_from_file(get_default_config(), path)
    # each base states its stage (the default config is a teacher: _vkd.yaml must say so)
    expected = {"_teacher.yaml": "teacher", "_vkd.yaml": "student"}[os.path.basename(path)]
    assert cfg.vkd.stage == expected
    assert "stage: " + expected in Path(path).read_text(encoding="utf-8")
    children = [p for p in EXPERIMENTS
                if f"_BASE_: {os.path.basename(path)}" in Path(p).read_text(encoding="utf-8")]
    assert children, f"no experiment inherits {path}"


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=[os.path.basename(p) for p in EXPERIMENTS])
def test_config_builds_data_and_models(path, synthetic_root, tmp_path):
    cfg = build_config(path, ["data.root", synthetic_root, "data.save_dir", str(tmp_path),
                              "model.pretrained", "False", "data.workers", "0"], [DEMO_CONFIG])
    dm = build_datamanager(cfg)
    train_ids = 40 // 2  # synthetic_root: 40 identities, half of them for training
    assert dm.num_train_pids == train_ids * len(cfg.data.sources)
    batch = next(iter(dm.train_loader.batch_sampler))
    assert len(batch) == cfg.train.batch_size
    assert all(len(item[2]) == cfg.video.seq_len for item in batch)
    for name in cfg.data.targets:  # every split the protocol ranks has a non-empty loader
        needed = {kind for mode in dm.protocols[name].modes for kind in MODES[mode]}
        assert needed and all(dm.test_loader[name][kind] is not None
                              and len(dm.test_loader[name][kind]) > 0 for kind in needed), name
    model = build_model(cfg.model.name, dm.num_train_pids, pretrained=False)
    assert tuple(model.classifier.weight.shape) == (dm.num_train_pids, model.feature_dim)
    if cfg.vkd.stage == "student" and cfg.vkd.teacher_arch:  # cross-distillation
        teacher = build_model(cfg.vkd.teacher_arch, dm.num_train_pids, pretrained=False)
        assert teacher.arch != model.arch
        assert teacher.classifier.weight.shape[0] == model.classifier.weight.shape[0]
