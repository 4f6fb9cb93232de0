"""The demo's config section (``demo.*``): its world and schedules.

Every command that reads configs accepts ``configs/demo.yaml``: the section is one of the
extensions :func:`vkd_torchreid.apps.common.load_config` registers.
"""
from __future__ import annotations

from yacs.config import CfgNode

from vkd_torchreid.config import ConfigExtension
from vkd_torchreid.config.validation import COUNT, Range, fail, in_range


def add_demo_config(cfg: CfgNode) -> None:
    """Adds the ``demo`` section (the demo's world and schedules) to a config."""
    cfg.demo = CfgNode()  # tools/main.py --config-file configs/demo.yaml
    cfg.demo.enabled = False  # True: the config is the demo's (run without a command: the demo)
    cfg.demo.ids = 64  # identities of the synthetic world (half train, half test)
    cfg.demo.train_ids = 0  # training identities of the world; 0: half of demo.ids
    cfg.demo.cams = 4
    cfg.demo.tracklets = 2  # per identity and camera
    cfg.demo.frames = 12
    cfg.demo.seed = 0
    cfg.demo.teacher_max_epoch = 40
    cfg.demo.val_every = 2  # epochs between validation evaluations of the teacher
    cfg.demo.patience = 3  # validations without a better mAP before the teacher stops
    cfg.demo.min_delta = 0.01  # a rise of the validation mAP smaller than this does not count
    cfg.demo.student_epoch = 20
    cfg.demo.student_stepsize = [14]  # the student's lr milestones (the teacher's: train.stepsize)
    cfg.demo.control = False  # also train the teacher on for student_epoch epochs



def validate_demo_config(cfg: CfgNode) -> None:
    """Checks the ``demo`` section; ValueError naming the key otherwise."""
    d = cfg.demo
    for key in ("ids", "cams", "tracklets", "frames", "teacher_max_epoch", "val_every",
                "student_epoch"):
        in_range(f"demo.{key}", d[key], COUNT)
    if d.ids < 4:
        raise fail("demo.ids", d.ids, "at least 4 identities (half train, half test)")
    if d.cams < 2:
        raise fail("demo.cams", d.cams, "at least 2 cameras")
    if not 0 <= d.train_ids < d.ids:
        raise fail("demo.train_ids", d.train_ids, f"0 (half) or 1..{d.ids - 1} (< demo.ids)")
    in_range("demo.patience", d.patience, Range(0, integer=True))
    in_range("demo.min_delta", d.min_delta, Range(0))
    if sorted(d.student_stepsize) != list(d.student_stepsize):
        raise fail("demo.student_stepsize", d.student_stepsize, "increasing epochs")


#: The demo's section of the config (a :class:`~vkd_torchreid.config.ConfigExtension`).
DEMO_CONFIG = ConfigExtension(add_demo_config, validate_demo_config)

__all__ = ["DEMO_CONFIG", "add_demo_config", "validate_demo_config"]
