"""One table of the paper's experiments, from which ``configs/`` is written.

Every experiment of the reference's ``commands.txt`` (aimagelab/VKD) has a config: the
teachers of stage 1 (``teacher_<dataset>_<arch>.yaml``), the self-distilled students
(``vkd_<dataset>_<arch>.yaml``), the cross-distillations (``vkd_<dataset>_<t>_to_<s>.yaml``,
whose student starts from its own stage-1 run as the reference's ``--student``), and one
control per dataset (``control_<dataset>_r50.yaml``: the student's config without
distillation, the paper's "can the student's performance be obtained without distillation?").
iLIDS-VID and PRID2011, which the paper does not cover, get a ResNet-50 teacher and student
with the MARS recipe (:data:`TEN_SPLIT_DATASETS`).

``python tools/make_configs.py`` writes them; ``tests/test_configs.py`` checks that the files
on disk are what this table says.
"""
from __future__ import annotations

import os
import textwrap
from typing import Any, Dict, List, Tuple

import yaml

#: Short name in file names -> our model name.
ARCHS: Dict[str, str] = {
    "r18": "vkd_resnet18", "r34": "vkd_resnet34", "r50": "vkd_resnet50",
    "r101": "vkd_resnet101", "r50bam": "vkd_resnet50_bam",
    "densenet121": "vkd_densenet121", "mobilenetv2": "vkd_mobilenetv2",
}
DATASETS: Tuple[str, ...] = ("mars", "duke", "veri")
#: Backbones the reference trains as teachers (commands.txt, stage 1).
TEACHERS: Tuple[str, ...] = ("r18", "r34", "r50", "r101", "r50bam", "densenet121", "mobilenetv2")
#: Backbones the reference self-distils (commands.txt, stage 2).
STUDENTS: Tuple[str, ...] = ("r34", "r50", "r101", "r50bam", "densenet121", "mobilenetv2")
#: (teacher, student) pairs the reference cross-distils.
CROSS: Tuple[Tuple[str, str], ...] = (("r101", "r34"), ("r101", "r50bam"),
                                      ("r101", "mobilenetv2"), ("r101", "r50"), ("r50", "r34"))
#: Video benchmarks the paper does not cover (torchreid's layouts and ten splits): a ResNet-50
#: teacher and its self-distilled student each, with the MARS recipe.
TEN_SPLIT_DATASETS: Tuple[str, ...] = ("ilidsvid", "prid2011")
TEN_SPLIT_NOTE = ("The paper and its reference code report no numbers on this dataset, and "
                  "this schedule is MARS's until someone tunes it. data.split_id (0-9) chooses "
                  "the split; vkd-reid splits runs all ten (mean +- std).")
#: The control's backbone (one per dataset).
CONTROL_ARCH = "r50"

HEADER = ("# Written by tools/make_configs.py from vkd_torchreid/apps/paper_configs.py: edit the\n"
          "# table there and re-run it, not this file.\n")

Config = Dict[str, Any]


def _data(ds: str, name: str) -> Config:
    data: Config = {"sources": [f"vkd_{ds}"], "targets": [f"vkd_{ds}"]}
    if ds == "veri":
        data.update(height=224, width=224, veri_query_track="first",
                    veri_image_gallery="tracks")
    if ds == "duke":
        data["duke_tracklets"] = "reference"
    data["save_dir"] = f"log/{name}"
    return data


def _checkpoint(ds: str, arch: str) -> str:
    return f"log/teacher_{ds}_{arch}/model/latest.pth.tar"


def teacher(ds: str, arch: str) -> Tuple[str, str, Config]:
    """Stage 1: P x K = 8 x 4 tracklets of N = 8 frames, 300 epochs, decays at 100 and 200;
    ResNet-18 on MARS/Duke decays every 50 epochs from 50; VeRi: N = 1 image, 18 x 4, decays
    at 200 and 250 (commands.txt's --first_milestone / --step_milestone)."""
    name = f"teacher_{ds}_{arch}"
    cfg: Config = {"_BASE_": "_teacher.yaml", "model": {"name": ARCHS[arch]},
                   "data": _data(ds, name)}
    if ds == "veri":
        cfg["train"] = {"batch_size": 72, "stepsize": [200, 250]}
        cfg["video"] = {"seq_len": 1, "test_seq_len": 8}
    elif arch == "r18":
        cfg["train"] = {"stepsize": [50, 100, 150, 200, 250]}
    return name, "Stage 1 (teacher, Video-To-Video).", cfg


def student(ds: str, arch: str) -> Tuple[str, str, Config]:
    """Stage 2, self-distillation: P x K = 12 x 4 items of N = 8 views, M = 2, 500 epochs,
    decays at 300 and 450 (from _vkd.yaml)."""
    name = f"vkd_{ds}_{arch}"
    cfg: Config = {"_BASE_": "_vkd.yaml", "model": {"name": ARCHS[arch]},
                   "data": _data(ds, name),
                   "vkd": {"teacher_checkpoint": _checkpoint(ds, arch)}}
    return name, "Stage 2 (VKD student), self-distillation of its teacher.", cfg


def cross(ds: str, t: str, s: str) -> Tuple[str, str, Config]:
    """Stage 2, cross-distillation: the student starts from its own stage-1 run."""
    name = f"vkd_{ds}_{t}_to_{s}"
    cfg: Config = {"_BASE_": "_vkd.yaml", "model": {"name": ARCHS[s]}, "data": _data(ds, name),
                   "vkd": {"teacher_arch": ARCHS[t], "teacher_checkpoint": _checkpoint(ds, t),
                           "student_checkpoint": _checkpoint(ds, s)}}
    return name, (f"Stage 2, cross-distillation: a {ARCHS[t]} teacher into a {ARCHS[s]} "
                  f"student that starts from its own stage-1 run (teacher_{ds}_{s})."), cfg


def control(ds: str) -> Tuple[str, str, Config]:
    """The student's config without distillation (alpha = beta = 0: the teacher is not run)."""
    name = f"control_{ds}_{CONTROL_ARCH}"
    _, _, cfg = student(ds, CONTROL_ARCH)
    cfg["data"]["save_dir"] = f"log/{name}"
    cfg["vkd"].update(alpha=0.0, beta=0.0)
    return name, ("The paper's control: exactly the student's run (same initialisation from the "
                  "teacher with layer4 and the classifier re-initialised, same views, M frames "
                  "and schedule) without distillation; the teacher is never run."), cfg


def experiments() -> List[Tuple[str, str, Config]]:
    """(name, one-line description, config dict) of every paper experiment."""
    out = [teacher(ds, a) for ds in DATASETS for a in TEACHERS]
    out += [student(ds, a) for ds in DATASETS for a in STUDENTS]
    out += [cross(ds, t, s) for ds in DATASETS for t, s in CROSS]
    out += [control(ds) for ds in DATASETS]
    for ds in TEN_SPLIT_DATASETS:
        for name, description, cfg in (teacher(ds, "r50"), student(ds, "r50")):
            out.append((name, f"{description} {TEN_SPLIT_NOTE}", cfg))
    return out


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _lines(cfg: Config, indent: str = "") -> List[str]:
    """Block-style mappings, flow-style lists (``[100, 200]``), as the hand-written files."""
    out = []
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.append(f"{indent}{key}:")
            out.extend(_lines(value, indent + "  "))
        elif isinstance(value, list):
            out.append(f"{indent}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            out.append(f"{indent}{key}: {_scalar(value)}")
    return out


def render(description: str, cfg: Config) -> str:
    """The YAML text of one config file."""
    comment = textwrap.fill(description, width=98, initial_indent="# ", subsequent_indent="# ")
    return HEADER + comment + "\n" + "\n".join(_lines(cfg)) + "\n"


def write_all(folder: str) -> List[str]:
    """Writes every experiment's config into ``folder``; returns the paths written."""
    paths = []
    for name, description, cfg in experiments():
        path = os.path.join(folder, f"{name}.yaml")
        text = render(description, cfg)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        paths.append(path)
    return paths
