"""The CPU demo: the whole method on a synthetic multi-view world in the MARS layout.

1. Writes the synthetic dataset (train/test) and a validation dataset of other identities
   if they are missing.
2. Trains a teacher until its validation mAP stops rising (patience), keeping the best.
3. Distils a student from that teacher (VKD), for ``demo.student_epoch`` epochs.
4. Optionally (``demo.control``) trains the teacher on for the same epochs without
   distillation: the paper's control that rules out "the student merely trained longer".
5. Evaluates all of them on the test set (each run's ``results.json``) and writes the
   summary (``summary.json``), a table and a chart.
6. Writes the analyses into ``analysis/``: the ``compare`` chart, the ``gallery-curve`` and
   the Grad-CAM ``explain`` grid with each network's foreground share (the world's person
   masks are written with it); Grad-CAM is skipped without the ``analysis`` extra.

    vkd-reid demo [--config-file demo] [--root R] [KEY VALUE ...]
    python tools/main.py --config-file configs/demo.yaml   (the config declares the demo)
"""
from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from yacs.config import CfgNode

from vkd_torchreid.apps.analysis.report import run_report
from vkd_torchreid.apps.common import (
    UserError,
    add_config_arguments,
    command_parser,
    config_of,
    derive,
    guarded,
    parse,
    start_run_folder,
)
from vkd_torchreid.data.manager import VKDDataManager
from vkd_torchreid.engine import build
from vkd_torchreid.engine.base import VKDEngineBase
from vkd_torchreid.engine.callbacks import EarlyStopping, Validation, default_callbacks
from vkd_torchreid.engine.evaluator import Evaluator
from vkd_torchreid.utils import checkpoint as ckpt_io
from vkd_torchreid.utils.distributed import env_world_size
from vkd_torchreid.utils.jsonio import write_json
from vkd_torchreid.utils.logs import setup_logging, teardown_logging
from vkd_torchreid.utils.plots import save_figure, subplots
from vkd_torchreid.utils.seeding import set_seed

logger = logging.getLogger(__name__)

DATASET = "vkd_mars"
TABLE_MODES = ("I2V", "V2V")
SUMMARY_FILE = "summary.json"


def masks_dir(cfg: CfgNode) -> str:
    """Where the demo's test world keeps its person masks (for the Grad-CAM share)."""
    return os.path.join(cfg.data.root, "masks")


def ensure_data(cfg: CfgNode) -> Tuple[str, str]:
    """Writes the demo's test world (with its person masks) and validation world if
    missing; returns both roots."""
    from vkd_torchreid.synthetic import write_synthetic

    d = cfg.demo
    roots = (cfg.data.root, os.path.join(cfg.data.root, "validation"))
    # Same seed (same cameras, light and backgrounds), disjoint identities.
    for root, first_pid, masks in zip(roots, (1, d.ids + 1), (masks_dir(cfg), "")):
        if not os.path.isdir(os.path.join(root, "mars")) or (
                masks and not os.path.isdir(os.path.join(masks, "mars"))):
            logger.info("writing the synthetic dataset to %s", root)
            write_synthetic(DATASET, root, ids=d.ids, cams=d.cams, tracklets=d.tracklets,
                            frames=d.frames, seed=d.seed, first_pid=first_pid,
                            train_ids=d.train_ids, masks=masks)
    return roots


def last_drop(cfg: CfgNode) -> int:
    """The epoch of the last learning-rate drop within the run (0 if none)."""
    drops = [e for e in cfg.train.stepsize if e < cfg.train.max_epoch]
    return max(drops, default=0)


def selection_callbacks(cfg: CfgNode, val_root: str) -> Tuple[Validation, EarlyStopping]:
    """The demo's teacher selection: validation V2V mAP every ``demo.val_every`` epochs on the
    world under ``val_root``; stop when ``demo.patience`` validations in a row do not beat the
    last significant best by ``demo.min_delta`` (counted after the last lr drop only); keep
    the best state."""
    d = cfg.demo
    val_dm = VKDDataManager.from_config(derive(cfg, {"data.root": val_root}))
    validation = Validation(Evaluator.from_config(cfg, val_dm), d.val_every)
    return validation, EarlyStopping(validation, d.patience, d.min_delta, last_drop(cfg))


def train_teacher(tcfg: CfgNode, val_root: str,
                  datamanager: Optional[VKDDataManager] = None
                  ) -> Tuple[VKDEngineBase, Dict[str, Any], List]:
    """Trains the teacher of ``tcfg`` with the demo's selection; returns the engine (holding
    the selected state, tested, saved as ``model/latest.pth.tar``), the selection and the
    validation curve ``[(epoch, mAP)]``."""
    validation, stopping = selection_callbacks(tcfg, val_root)
    callbacks = [*default_callbacks(tcfg.test.eval_freq, tcfg.test.start_eval), validation,
                 stopping]
    engine = build.build_engine(tcfg, datamanager, callbacks=callbacks)
    engine.run(tcfg.data.save_dir, tcfg.train.max_epoch, 0, tcfg.train.print_freq)
    return engine, stopping.info, validation.curve


def run_demo(cfg: CfgNode) -> Dict[str, Any]:
    """Runs the demo; returns the summary written to ``<run dir>/summary.json``."""
    start = time.time()
    d = cfg.demo
    _, val_root = ensure_data(cfg)
    run_dir = os.path.join(cfg.data.save_dir, time.strftime("run-%Y%m%d-%H%M%S"))
    while os.path.exists(run_dir):
        run_dir += "-1"
    os.makedirs(run_dir)
    tcfg = derive(cfg, {"vkd.stage": "teacher", "train.max_epoch": d.teacher_max_epoch,
                        "data.save_dir": os.path.join(run_dir, "teacher")})
    teacher_engine, teacher_info, teacher_curve = train_teacher(tcfg, val_root)
    rows = {"teacher": teacher_engine.results}

    scfg = derive(cfg, {"vkd.stage": "student", "train.max_epoch": d.student_epoch,
                        "train.stepsize": list(d.student_stepsize),
                        "vkd.teacher_checkpoint": "(in memory)",
                        "data.save_dir": os.path.join(run_dir, "student")})
    student = build.build_engine(scfg, teacher=copy.deepcopy(teacher_engine.model))
    student.run(scfg.data.save_dir, d.student_epoch, 0, cfg.train.print_freq)
    rows["student"] = student.results

    if d.control:
        # The selected teacher trained on for the student's epochs and schedule, on the same
        # loader, without distillation: epochs are numbered after the teacher's.
        done = teacher_engine.completed_epochs
        ccfg = derive(tcfg, {"data.save_dir": os.path.join(run_dir, "teacher_control"),
                             "train.stepsize": list(d.student_stepsize),
                             "model.load_weights": os.path.join(tcfg.data.save_dir, "model",
                                                                ckpt_io.LATEST_NAME)})
        control = build.build_engine(ccfg, teacher_engine.datamanager)
        control.run(ccfg.data.save_dir, done + d.student_epoch, done, cfg.train.print_freq)
        rows["teacher_control"] = control.results

    pictures = run_report(cfg, run_dir, list(rows), masks_dir(cfg),
                          datamanager=teacher_engine.datamanager)
    summary = {
        "dataset": DATASET,
        "wall_time_s": round(time.time() - start, 1),
        "analysis": pictures,
        "teacher_selected": teacher_info,
        "teacher_validation_curve": teacher_curve,
        "table": {name: {mode: {k: r[DATASET][mode][k] for k in ("rank1", "mAP", "mAP_mars")}
                         for mode in TABLE_MODES} for name, r in rows.items()},
        "runs": {name: os.path.join(run_dir, name) for name in rows},
    }
    write_json(summary, os.path.join(run_dir, SUMMARY_FILE))
    print(format_table(summary["table"]))
    chart = write_chart(summary["table"], os.path.join(run_dir, "results.png"))
    print(f"\nsummary: {os.path.join(run_dir, SUMMARY_FILE)}  chart: {chart}  "
          f"wall time: {summary['wall_time_s'] / 60:.1f} min")
    print("analysis: " + "  ".join(f"{k}: {v}" for k, v in pictures.items()))
    return summary


def format_table(table: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """Markdown table of top-1 and mAP for every model and mode."""
    head = "| model | " + " | ".join(f"{m} top-1 | {m} mAP" for m in TABLE_MODES) + " |"
    sep = "|---" * (1 + 2 * len(TABLE_MODES)) + "|"
    lines = [head, sep]
    for name, modes in table.items():
        cells = [f"{100 * modes[m]['rank1']:.1f} | {100 * modes[m]['mAP']:.1f}"
                 for m in TABLE_MODES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_chart(table: Dict[str, Dict[str, Dict[str, float]]], path: str) -> str:
    """Bar chart of top-1 and mAP per mode and model, saved as PNG."""
    names = list(table)
    metrics = [(m, k) for m in TABLE_MODES for k in ("rank1", "mAP")]
    fig, ax = subplots(figsize=(7, 3.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [100 * table[name][m][k] for m, k in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], values, width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels([f"{m} {'top-1' if k == 'rank1' else k}" for m, k in metrics])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("VKD demo (synthetic MARS layout, CPU)")
    return save_figure(fig, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid demo``: runs the demo of a config (``configs/demo.yaml`` by default) into a
    new timestamped folder of ``data.save_dir``; returns the exit code."""
    from vkd_torchreid.engine.loss_values import NonFiniteLossError

    def run() -> int:
        parser = command_parser("vkd-reid demo", __doc__)
        args = parse(add_config_arguments(parser, config_file="demo"), argv)
        cfg = config_of(args)
        if env_world_size() > 1:
            raise UserError("the demo runs in one process: launch it without torchrun")
        if cfg.model.resume:
            raise UserError("the demo always starts fresh in a new run folder; model.resume "
                            "does not apply to it")
        setup_logging()
        try:
            start_run_folder(cfg)
            set_seed(cfg.train.seed)  # the same run for the same config
            run_demo(cfg)
        finally:
            teardown_logging()
        return 0

    return guarded(run, (NonFiniteLossError,))
