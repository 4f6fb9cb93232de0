"""A seeded study of the method's options on the synthetic world: mean and spread over seeds.

For each training seed, the study trains a teacher with the demo's schedule and teacher
selection (trained past its last lr drop, then until its validation mAP stops rising; the best
state is kept), then, from that same teacher, one student per variant:

- ``vkd``: the paper's student (the reference's views, ``multiview_random``);
- ``vkd_multiview``: camera-balanced views (our option);
- ``vkd_no_reinit``: the student keeps the teacher's layer4 (without ImageNet weights, a
  re-initialised layer4 is a random one: a handicap the paper did not have);
- ``control``: the student's run without distillation (alpha = beta = 0);
- ``vkd_cache`` (on request): the student with the teacher-feature cache (eval-mode teacher);
  ``vkd_eval_bn``: the uncached student with an eval-mode teacher, to tell the cache's
  effects apart.

Every run is evaluated on the test world and the study writes ``summary.json`` and
``summary.md`` (mean, standard deviation, min and max over seeds of I2V / V2V top-1 and mAP,
and of each run's wall time, the cache build included).
It is resumable per (variant, seed): a run whose ``results.json`` exists is not trained again
(an unfinished one starts again from scratch), so the study can be stopped and restarted
across sittings.
"""
from __future__ import annotations

import logging
import os
import shutil
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

from yacs.config import CfgNode

from vkd_torchreid.apps import demo
from vkd_torchreid.apps.common import (
    add_config_arguments,
    command_parser,
    config_of,
    derive,
    guarded,
    parse,
    write_summary,
)
from vkd_torchreid.engine import build
from vkd_torchreid.engine.evaluator import RESULTS_FILE
from vkd_torchreid.utils import checkpoint as ckpt_io
from vkd_torchreid.utils.jsonio import read_json, write_json
from vkd_torchreid.utils.logs import setup_logging, teardown_logging
from vkd_torchreid.utils.seeding import set_seed

logger = logging.getLogger(__name__)

TEACHER = "teacher"
#: Student variants: config overrides on top of the study's student config.
VARIANTS: Dict[str, List[str]] = {
    "vkd": ["vkd.view_strategy", "multiview_random"],
    "vkd_multiview": ["vkd.view_strategy", "multiview"],
    "vkd_no_reinit": ["vkd.view_strategy", "multiview_random", "vkd.reinit_layer4", "False"],
    "control": ["vkd.view_strategy", "multiview_random", "vkd.alpha", "0.0", "vkd.beta", "0.0"],
    # The teacher cache and, to tell its effects apart, the eval-mode teacher alone.
    "vkd_cache": ["vkd.view_strategy", "multiview_random", "vkd.teacher_bn", "eval",
                  "vkd.teacher_cache", "True"],
    "vkd_eval_bn": ["vkd.view_strategy", "multiview_random", "vkd.teacher_bn", "eval"],
}
#: The variants a study runs unless told otherwise (the fidelity study).
DEFAULT_VARIANTS = ("vkd", "vkd_multiview", "vkd_no_reinit", "control")
RUN_FILE = "run.json"
MODES = ("I2V", "V2V")
METRICS = ("rank1", "mAP", "mAP_mars")


def run_dir(out: str, variant: str, seed: int) -> str:
    return os.path.join(out, f"seed{seed}", variant)


def _fresh(path: str) -> None:
    """Clears what an interrupted run of the study left in its own folder."""
    if os.path.isdir(path):
        logger.info("%s: an unfinished run; starting it again", path)
        shutil.rmtree(path)


def _done(path: str) -> Optional[Dict[str, Any]]:
    results = os.path.join(path, RESULTS_FILE)
    if not os.path.isfile(results):
        return None
    return read_json(results)


def train_teacher(cfg: CfgNode, seed: int, out: str, val_root: str) -> str:
    """Trains and selects the teacher of one seed (the demo's rule); returns its checkpoint."""
    save = run_dir(out, TEACHER, seed)
    ckpt = os.path.join(save, "model", ckpt_io.LATEST_NAME)
    if _done(save) is not None and os.path.isfile(ckpt):
        return ckpt
    tcfg = derive(cfg, ["vkd.stage", "teacher", "train.max_epoch", str(cfg.demo.teacher_max_epoch),
                       "train.seed", str(seed), "data.save_dir", save])
    _fresh(save)
    set_seed(seed)
    start = time.time()
    _, info, curve = demo.train_teacher(tcfg, val_root)
    write_json({"wall_time_s": round(time.time() - start, 1)}, os.path.join(save, RUN_FILE))
    write_json({"selected": info, "validation_curve": curve},
               os.path.join(save, "selection.json"))
    return ckpt


def train_student(cfg: CfgNode, variant: str, seed: int, out: str, teacher_ckpt: str) -> None:
    """Distils one student variant of one seed from the seed's teacher checkpoint."""
    d = cfg.demo
    save = run_dir(out, variant, seed)
    if _done(save) is not None:
        return
    scfg = derive(cfg, ["vkd.stage", "student", "train.max_epoch", str(d.student_epoch),
                       "train.stepsize", str(list(d.student_stepsize)), "train.seed", str(seed),
                       "vkd.teacher_checkpoint", teacher_ckpt, "data.save_dir", save,
                       *VARIANTS[variant]])
    _fresh(save)
    set_seed(seed)
    start = time.time()
    build.prepare_training(scfg).run()
    write_json({"wall_time_s": round(time.time() - start, 1)}, os.path.join(save, RUN_FILE))


def run_study(cfg: CfgNode, out: str, seeds: Sequence[int],
              variants: Sequence[str] = DEFAULT_VARIANTS) -> Dict[str, Any]:
    """Runs (or resumes) the study; writes and returns its summary."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown study variant(s) {unknown}; expected some of {list(VARIANTS)}")
    start = time.time()
    _, val_root = demo.ensure_data(cfg)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w", encoding="utf-8") as fh:
        fh.write(cfg.dump())
    for seed in seeds:
        t0 = time.time()
        teacher_ckpt = train_teacher(cfg, seed, out, val_root)
        logger.info("seed %d: teacher ready (%.1f min)", seed, (time.time() - t0) / 60)
        for variant in variants:
            t0 = time.time()
            train_student(cfg, variant, seed, out, teacher_ckpt)
            logger.info("seed %d: %s done (%.1f min)", seed, variant, (time.time() - t0) / 60)
    summary = summarize(out, seeds, [TEACHER, *variants])
    summary["wall_time_s_this_sitting"] = round(time.time() - start, 1)
    write_summary(summary, format_summary(summary), out, "summary")
    return summary


def _stats(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _wall_time(out: str, run: str, seed: int) -> Optional[float]:
    path = os.path.join(run_dir(out, run, seed), RUN_FILE)
    if not os.path.isfile(path):
        return None
    return float(read_json(path)["wall_time_s"])


def summarize(out: str, seeds: Sequence[int], runs: Sequence[str]) -> Dict[str, Any]:
    """Mean and spread over seeds of every run's test metrics (fractions in [0, 1])."""
    dataset = demo.DATASET
    per_run: Dict[str, Any] = {}
    for run in runs:
        found = {s: r for s in seeds if (r := _done(run_dir(out, run, s))) is not None}
        if not found:
            continue
        walls = [w for seed in sorted(found) if (w := _wall_time(out, run, seed)) is not None]
        per_run[run] = {
            "seeds": sorted(found),
            **({"wall_time_s": _stats(walls)} if walls else {}),
            **{f"{mode}_{m}": _stats([found[s][dataset][mode][m] for s in sorted(found)])
               for mode in MODES for m in METRICS},
            "per_seed": {s: {mode: {m: found[s][dataset][mode][m] for m in METRICS}
                             for mode in MODES} for s in sorted(found)},
        }
    return {"dataset": dataset, "out": out, "runs": per_run}


def format_summary(summary: Dict[str, Any]) -> str:
    """Markdown table: mean ± std (min-max) in percent, per run and metric."""
    cols = [(mode, m) for mode in MODES for m in ("rank1", "mAP")]
    head = "| run | seeds | " + " | ".join(
        f"{mode} {'top-1' if m == 'rank1' else m}" for mode, m in cols) + " | wall time (min) |"
    lines = [head, "|---" * (3 + len(cols)) + "|"]
    for run, row in summary["runs"].items():
        cells = []
        for mode, m in cols:
            s = row[f"{mode}_{m}"]
            cells.append(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} "
                         f"({100 * s['min']:.1f}-{100 * s['max']:.1f})")
        wall = row.get("wall_time_s")
        cells.append(f"{wall['mean'] / 60:.1f} ± {wall['std'] / 60:.1f}" if wall else "-")
        lines.append(f"| {run} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid study`` (and ``tools/study.py``): runs or resumes a study; the exit code."""
    parser = command_parser("vkd-reid study", "The seeded, resumable study of the method's "
                            "options on the synthetic world (mean, std and range over seeds).")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 1..N")
    parser.add_argument("--out", default="log/study", help="output folder (resumable)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        choices=list(VARIANTS))
    add_config_arguments(parser, config_file="study")

    def run() -> int:
        args = parse(parser, argv)
        cfg = config_of(args)
        setup_logging(args.out)
        try:
            run_study(cfg, args.out, list(range(1, args.seeds + 1)), args.variants)
        finally:
            teardown_logging()
        return 0

    return guarded(run)
