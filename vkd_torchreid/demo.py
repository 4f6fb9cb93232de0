"""The CPU demo: the whole method on a synthetic multi-view world in the MARS layout.

1. Writes the synthetic dataset (train/test) and a validation dataset of other identities
   if they are missing.
2. Trains a teacher until its validation mAP stops rising (patience), keeping the best.
3. Distils a student from that teacher (VKD), for ``demo.student_epoch`` epochs.
4. Optionally (``demo.control``) trains the teacher on for the same epochs without
   distillation: the paper's control that rules out "the student merely trained longer".
5. Evaluates all of them on the test set and writes ``results.json``, a table and a chart.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from yacs.config import CfgNode

from vkd_torchreid.data.manager import VKDDataManager, build_datamanager
from vkd_torchreid.engine import build
from vkd_torchreid.engine.base import VKDEngineBase, write_json

logger = logging.getLogger(__name__)

DATASET = "vkd_mars"
TABLE_MODES = ("I2V", "V2V")


def _sub(cfg: CfgNode, **changes: Any) -> CfgNode:
    """A copy of ``cfg`` with dotted-key changes."""
    out = cfg.clone()
    out.defrost()
    for key, value in changes.items():
        node = out
        parts = key.split("__")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    out.freeze()
    return out


def ensure_data(cfg: CfgNode) -> Tuple[str, str]:
    """Writes the demo's test and validation worlds if missing; returns both roots."""
    from vkd_torchreid.data.synthetic import write_synthetic

    d = cfg.demo
    roots = (cfg.data.root, os.path.join(cfg.data.root, "validation"))
    # Same seed (same cameras, light and backgrounds), disjoint identities.
    for root, first_pid in zip(roots, (1, d.ids + 1)):
        if not os.path.isdir(os.path.join(root, "mars")):
            logger.info("writing the synthetic dataset to %s", root)
            write_synthetic(DATASET, root, ids=d.ids, cams=d.cams, tracklets=d.tracklets,
                            frames=d.frames, seed=d.seed, first_pid=first_pid,
                            train_ids=d.train_ids)
    return roots


def _validate(engine: VKDEngineBase, val_dm: VKDDataManager) -> float:
    """V2V mAP of the engine's model on the validation world."""
    test_dm = engine.datamanager
    engine.datamanager = val_dm
    try:
        engine.set_model_mode("eval")
        metrics = engine.evaluate_dataset(DATASET)
    finally:
        engine.datamanager = test_dm
    return metrics["V2V"]["mAP"]


def train_epochs(engine: VKDEngineBase, epochs: int, val_dm: Optional[VKDDataManager],
                 val_every: int, patience: int, print_freq: int,
                 min_delta: float = 0.0, min_epochs: int = 0) -> Tuple[Dict[str, Any], List]:
    """Trains ``epochs`` epochs (early-stopped on validation mAP when ``patience`` > 0).

    The mAP "stops rising" when ``patience`` validations in a row fail to beat the last
    significant best by more than ``min_delta``; only validations after ``min_epochs`` (the
    last learning-rate drop) count, so the schedule always runs to its end. The best state
    seen is kept in any case.

    Returns the best state dict (the last one without validation) and the curve
    ``[(epoch, val_mAP)]``.
    """
    engine.max_epoch = epochs
    best_map, best_state, waited, curve, plateau = -1.0, None, 0, [], False
    reference = -1.0  # the last best that counted as a significant rise
    for epoch in range(epochs):
        engine.epoch = epoch
        engine.train(print_freq=print_freq)
        if val_dm is None or (epoch + 1) % val_every:
            continue
        m = _validate(engine, val_dm)
        curve.append((epoch + 1, m))
        logger.info("%s epoch %d: validation V2V mAP %.1f%%", engine.stage, epoch + 1, 100 * m)
        if m > best_map:
            best_map = m
            best_state = (epoch + 1, copy.deepcopy(engine.model.state_dict()))
        if m > reference + min_delta:
            reference, waited = m, 0
        elif epoch + 1 > min_epochs:
            waited += 1
            if patience and waited >= patience:
                logger.info("validation mAP stopped rising: best %.1f%% at epoch %d",
                            100 * best_map, best_state[0])
                plateau = True
                break
    if val_dm is not None and patience and not plateau:
        logger.warning("%s: validation mAP was still rising after %d epochs (best %.1f%%); "
                       "raise demo.teacher_max_epoch for a fair comparison",
                       engine.stage, epochs, 100 * best_map)
    if best_state is None:
        best_state = (engine.completed_epochs, copy.deepcopy(engine.model.state_dict()))
    epoch, state = best_state
    engine.model.load_state_dict(state)
    engine.completed_epochs = epoch
    return {"epoch": epoch, "val_mAP": best_map, "plateau_reached": plateau}, curve


def last_drop(cfg: CfgNode) -> int:
    """The epoch of the last learning-rate drop within the run (0 if none)."""
    drops = [e for e in cfg.train.stepsize if e < cfg.train.max_epoch]
    return max(drops, default=0)


def _final(engine: VKDEngineBase, save_dir: str) -> Dict[str, Any]:
    engine.save_dir = save_dir
    engine.save_model(engine.completed_epochs - 1, 0.0, save_dir)
    engine.test(save_dir=save_dir)
    return engine.results


def run_demo(cfg: CfgNode, trust: bool = False) -> Dict[str, Any]:
    """Runs the demo; returns the summary written to ``<run dir>/results.json``."""
    start = time.time()
    d = cfg.demo
    data_root, val_root = ensure_data(cfg)
    run_dir = os.path.join(cfg.data.save_dir, time.strftime("run-%Y%m%d-%H%M%S"))
    while os.path.exists(run_dir):
        run_dir += "-1"
    os.makedirs(run_dir)
    tcfg = _sub(cfg, vkd__stage="teacher", train__max_epoch=d.teacher_max_epoch,
                data__save_dir=os.path.join(run_dir, "teacher"))
    val_dm = build_datamanager(_sub(tcfg, data__root=val_root))
    teacher_engine = build.build_engine(tcfg, build_datamanager(tcfg))
    teacher_engine.save_dir = tcfg.data.save_dir
    teacher_info, teacher_curve = train_epochs(teacher_engine, d.teacher_max_epoch, val_dm,
                                               d.val_every, d.patience, cfg.train.print_freq,
                                               d.min_delta, last_drop(tcfg))
    rows = {"teacher": _final(teacher_engine, tcfg.data.save_dir)}
    teacher = copy.deepcopy(teacher_engine.model)

    scfg = _sub(cfg, vkd__stage="student", train__max_epoch=d.student_epoch,
                train__stepsize=list(d.student_stepsize),
                vkd__teacher_checkpoint="(in memory)",
                data__save_dir=os.path.join(run_dir, "student"))
    student_engine = build.build_engine(scfg, build_datamanager(scfg), teacher=teacher)
    student_engine.save_dir = scfg.data.save_dir
    train_epochs(student_engine, d.student_epoch, None, 1, 0, cfg.train.print_freq)
    rows["student"] = _final(student_engine, scfg.data.save_dir)

    if d.control:
        # Same epochs and schedule as the student, from the selected teacher, no distillation.
        ccfg = _sub(tcfg, data__save_dir=os.path.join(run_dir, "teacher_control"),
                    train__stepsize=list(d.student_stepsize))
        teacher_engine.save_dir = ccfg.data.save_dir
        teacher_engine.optimizer, teacher_engine.scheduler = build.build_optim(
            ccfg, teacher_engine.model)
        teacher_engine._optims["model"] = teacher_engine.optimizer
        teacher_engine._scheds["model"] = teacher_engine.scheduler
        done = teacher_engine.completed_epochs
        train_epochs(teacher_engine, d.student_epoch, None, 1, 0, cfg.train.print_freq)
        teacher_engine.completed_epochs = done + d.student_epoch
        rows["teacher_control"] = _final(teacher_engine, ccfg.data.save_dir)

    summary = {
        "dataset": DATASET,
        "wall_time_s": round(time.time() - start, 1),
        "teacher_selected": teacher_info,
        "teacher_validation_curve": teacher_curve,
        "table": {name: {mode: {k: r[DATASET][mode][k] for k in ("rank1", "mAP", "mAP_mars")}
                         for mode in TABLE_MODES} for name, r in rows.items()},
        "runs": {name: os.path.join(run_dir, name) for name in rows},
    }
    write_json(summary, os.path.join(run_dir, "results.json"))
    print(format_table(summary["table"]))
    chart = write_chart(summary["table"], os.path.join(run_dir, "results.png"))
    print(f"\nresults: {os.path.join(run_dir, 'results.json')}  chart: {chart}  "
          f"wall time: {summary['wall_time_s'] / 60:.1f} min")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    metrics = [(m, k) for m in TABLE_MODES for k in ("rank1", "mAP")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
