"""``vkd-reid splits``: a config over the ten train/test splits of iLIDS-VID or PRID2011, the way
these datasets are reported (mean ± std over the splits).

For each split (``data.split_id``) it trains the teacher config; with ``--student-config`` it
then distils that split's student from that split's teacher (each split has its own training
people, so its own teacher). Runs go to ``<out>/split<k>/{teacher,student}``; a run whose
``results.json`` exists is not trained again (an unfinished one starts again from scratch), so
the command can be stopped and re-run. It writes ``<out>/splits.json`` and ``<out>/splits.md``:
for every run and protocol, top-1/5/10/20 and mAP as mean ± std over the finished splits, and
the per-split rows.

    vkd-reid splits --config-file configs/teacher_ilidsvid_r50.yaml \\
        --student-config configs/vkd_ilidsvid_r50.yaml --splits 0-9 --out log/ilidsvid_splits
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from vkd_torchreid.apps.common import USER_ERRORS
from vkd_torchreid.config import build_config
from vkd_torchreid.data.registry import dataset_class
from vkd_torchreid.engine import build
from vkd_torchreid.engine.evaluator import RESULTS_FILE
from vkd_torchreid.utils import checkpoint as ckpt_io
from vkd_torchreid.utils.jsonio import write_json
from vkd_torchreid.utils.logs import one_line, setup_logging, teardown_logging

logger = logging.getLogger(__name__)

NUM_SPLITS = 10
RUNS = ("teacher", "student")
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP")
LABELS = {"rank1": "top-1", "rank5": "top-5", "rank10": "top-10", "rank20": "top-20",
          "mAP": "mAP"}
RUN_FILE = "run.json"


def parse_splits(text: str) -> List[int]:
    """``"0-9"``, ``"3"``, ``"0,2,5-7"`` -> sorted split ids in 0..9.

    Raises:
        ValueError: not such a list, or an id outside 0..9.
    """
    out = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"--splits {text!r}: expected ids and ranges such as 0-9 or 0,2,5-7")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if not 0 <= low <= high < NUM_SPLITS:
            raise ValueError(f"--splits {text!r}: {part.strip()} is not within 0-"
                             f"{NUM_SPLITS - 1} (low before high)")
        out.update(range(low, high + 1))
    return sorted(out)


def run_dir(out: str, split_id: int, run: str) -> str:
    return os.path.join(out, f"split{split_id}", run)


def _results(path: str) -> Optional[Dict[str, Any]]:
    file = os.path.join(path, RESULTS_FILE)
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as fh:
        return json.load(fh)


def _train(cfg: Any, save: str) -> None:
    if os.path.isdir(save):
        logger.info("%s: an unfinished run; starting it again", save)
        shutil.rmtree(save)
    start = time.time()
    job = build.prepare_training(cfg)
    os.makedirs(save, exist_ok=True)
    with open(os.path.join(save, "config.yaml"), "w", encoding="utf-8") as fh:
        fh.write(cfg.dump())
    job.run()
    write_json({"wall_time_s": round(time.time() - start, 1)}, os.path.join(save, RUN_FILE))


def run_split(teacher_file: str, student_file: str, split_id: int, out: str,
              opts: Sequence[str]) -> None:
    """Trains (or skips, if finished) the teacher and the student of one split."""
    save = run_dir(out, split_id, "teacher")
    ckpt = os.path.join(save, "model", ckpt_io.LATEST_NAME)
    if _results(save) is None or not os.path.isfile(ckpt):
        cfg = build_config(teacher_file, [*opts, "data.split_id", str(split_id),
                                          "data.save_dir", save])
        _train(cfg, save)
    if not student_file:
        return
    save = run_dir(out, split_id, "student")
    if _results(save) is None:
        cfg = build_config(student_file, [*opts, "data.split_id", str(split_id),
                                          "data.save_dir", save, "vkd.teacher_checkpoint", ckpt])
        _train(cfg, save)


def _stats(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _wall(path: str) -> Optional[float]:
    file = os.path.join(path, RUN_FILE)
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as fh:
        return float(json.load(fh)["wall_time_s"])


def summarize(out: str, split_ids: Sequence[int]) -> Dict[str, Any]:
    """Mean ± std over the finished splits, and the per-split rows (fractions in [0, 1])."""
    runs: Dict[str, Any] = {}
    dataset = ""
    for run in RUNS:
        found = {s: r for s in split_ids if (r := _results(run_dir(out, s, run))) is not None}
        if not found:
            continue
        per_split = {}
        for s, record in found.items():
            names = [k for k, v in record.items() if isinstance(v, dict)]
            dataset = dataset or names[0]
            per_split[s] = {mode: {m: record[names[0]][mode][m] for m in METRICS}
                            for mode in record[names[0]]}
        modes = list(next(iter(per_split.values())))
        walls = [_wall(run_dir(out, s, run)) for s in sorted(found)]
        runs[run] = {
            "splits": sorted(found),
            **({"wall_time_s": _stats(walls)} if None not in walls else {}),
            "protocols": {mode: {m: _stats([per_split[s][mode][m] for s in sorted(found)])
                                 for m in METRICS} for mode in modes},
            "per_split": {str(s): per_split[s] for s in sorted(found)},
        }
    return {"dataset": dataset, "out": out, "splits_asked": list(split_ids), "runs": runs}


def format_table(summary: Dict[str, Any]) -> str:
    """Markdown: mean ± std in percent per run and protocol, then the per-split rows."""
    cols = " | ".join(LABELS[m] for m in METRICS)
    lines = [f"{summary['dataset']}: mean ± std over splits (%)", "",
             f"| run | protocol | splits | {cols} |", "|---" * (3 + len(METRICS)) + "|"]
    for run, row in summary["runs"].items():
        for mode, metrics in row["protocols"].items():
            cells = " | ".join(f"{100 * metrics[m]['mean']:.1f} ± {100 * metrics[m]['std']:.1f}"
                               for m in METRICS)
            lines.append(f"| {run} | {mode} | {len(row['splits'])} | {cells} |")
    lines += ["", "Per split (%)", "", f"| run | split | protocol | {cols} |",
              "|---" * (3 + len(METRICS)) + "|"]
    for run, row in summary["runs"].items():
        for s, per_mode in row["per_split"].items():
            for mode, metrics in per_mode.items():
                cells = " | ".join(f"{100 * metrics[m]:.1f}" for m in METRICS)
                lines.append(f"| {run} | {s} | {mode} | {cells} |")
    return "\n".join(lines)


def check_inputs(teacher_file: str, student_file: str, split_ids: Sequence[int],
                 opts: Sequence[str] = ()) -> None:
    """Every config, and every split of its datasets, is read before anything is written.

    Raises:
        FileNotFoundError, KeyError, ValueError: a bad config, a missing or bad dataset file,
            a split id the dataset's split file does not have.
    """
    for path in (teacher_file, student_file):
        if not path:
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"missing config file {path}")
        # the student's teacher is each split's: any name passes validation here
        cfg = build_config(path, [*opts, "vkd.teacher_checkpoint", "per-split"])
        for s in split_ids:
            for name in dict.fromkeys([*cfg.data.sources, *cfg.data.targets]):
                cls = dataset_class(name)
                if "split_id" not in cls.OPTIONS:
                    raise ValueError(f"{path}: dataset {name} has no train/test splits to run "
                                     "over (vkd_ilidsvid and vkd_prid2011 have ten)")
                cls.load(cfg.data.root, **{k: s if k == "split_id" else cfg.data[k]
                                           for k in cls.OPTIONS})


def run_splits(teacher_file: str, student_file: str, split_ids: Sequence[int], out: str,
               opts: Sequence[str] = ()) -> Dict[str, Any]:
    """Runs (or resumes) every split, then writes and returns the summary."""
    check_inputs(teacher_file, student_file, split_ids, opts)
    start = time.time()
    for s in split_ids:
        t0 = time.time()
        run_split(teacher_file, student_file, s, out, opts)
        logger.info("split %d done (%.1f min)", s, (time.time() - t0) / 60)
    summary = summarize(out, split_ids)
    summary["wall_time_s_this_sitting"] = round(time.time() - start, 1)
    write_json(summary, os.path.join(out, "splits.json"))
    table = format_table(summary)
    with open(os.path.join(out, "splits.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    print(table)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid splits``: runs or resumes the ten-split evaluation; the exit code."""
    parser = argparse.ArgumentParser(
        prog="vkd-reid splits", description="A teacher (and its student) over the ten "
        "train/test splits of iLIDS-VID or PRID2011: mean ± std and per-split rows.")
    parser.add_argument("--config-file", required=True, help="the teacher's config")
    parser.add_argument("--student-config", default="",
                        help="the student's config (distilled from each split's teacher)")
    parser.add_argument("--splits", default="0-9", help="split ids: 0-9, 3 or 0,2,5-7")
    parser.add_argument("--out", default="log/splits", help="output folder (resumable)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE overrides for both configs")
    args = parser.parse_args(argv)
    try:
        split_ids = parse_splits(args.splits)
        check_inputs(args.config_file, args.student_config, split_ids, args.opts)
    except USER_ERRORS as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    setup_logging(args.out)
    try:
        run_splits(args.config_file, args.student_config, split_ids, args.out, args.opts)
    except USER_ERRORS as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        teardown_logging()
    return 0
