"""``vkd-reid compare RUN [RUN ...] --output DIR``: runs side by side.

Each RUN is a ``results.json`` or a run folder holding one. For every (dataset, protocol)
present in all runs, the table gives top-1, mAP and ``mAP_mars`` in percent, with the deltas
against the first run. Writes ``compare.md``, ``compare.csv``, ``compare.json`` (every number)
and ``compare.png`` (a grouped bar chart: one group per protocol and metric, one bar per run).
"""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from vkd_torchreid.apps.common import command_parser, guarded
from vkd_torchreid.engine.evaluator import RESULTS_FILE
from vkd_torchreid.utils.jsonio import read_json, write_json
from vkd_torchreid.utils.plots import save_figure, subplots

METRICS = ("rank1", "mAP", "mAP_mars")
#: ``results.json`` keys that are not datasets.
_RECORD_KEYS = {"stage", "generation", "epoch", "world_size"}


def read_run(path: str) -> Tuple[str, Dict[str, Dict[str, Dict[str, float]]]]:
    """(label, {dataset: {protocol: metrics}}) of a results file or a run folder.

    Raises:
        FileNotFoundError: no such file, or a folder without ``results.json``.
        ValueError: a file that is not JSON, not our ``results.json`` layout, or with a
            metric that is not a number (the file and the key named).
    """
    file = os.path.join(path, RESULTS_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: no {RESULTS_FILE} there" if os.path.isdir(path)
                                else f"no such results file or run folder: {path}")
    record = read_json(file)  # an unreadable file: one line naming it, with line and column
    data = {k: v for k, v in record.items() if k not in _RECORD_KEYS} \
        if isinstance(record, dict) else {}
    ok = data and all(isinstance(p, dict) and all(isinstance(m, dict) and "rank1" in m
                                                   for m in p.values()) for p in data.values())
    if not ok:
        raise ValueError(f"{file} does not hold {{dataset: {{protocol: {{rank1, mAP, ...}}}}}} "
                         "metrics (the layout our evaluation writes)")
    for dataset, protocols in data.items():
        for protocol, metrics in protocols.items():
            for m in METRICS:
                value = metrics.get(m, 0.0)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{file}: {dataset}.{protocol}.{m} is "
                                     f"{json.dumps(value)}, expected a number")
    folder = os.path.dirname(os.path.abspath(file))
    return os.path.basename(folder) or folder, data


def numbered(names: Sequence[str]) -> List[str]:
    """``names`` with every repeated one numbered by position (``run#1``, ``run#2``)."""
    return [f"{n}#{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def compare(paths: Sequence[str]) -> Dict[str, Any]:
    """Every number of the comparison: runs, the common (dataset, protocol) rows, values in
    percent and deltas against the first run."""
    if not paths:
        raise ValueError("nothing to compare: give at least one results.json or run folder")
    runs = [read_run(p) for p in paths]
    labels = numbered([label for label, _ in runs])
    keys = [(d, p) for d, protos in runs[0][1].items() for p in protos
            if all(p in r.get(d, {}) for _, r in runs[1:])]
    if not keys:
        raise ValueError("the runs have no (dataset, protocol) in common")
    rows = []
    for d, p in keys:
        values = [{m: 100 * float(r[d][p].get(m, float("nan"))) for m in METRICS}
                  for _, r in runs]
        rows.append({"dataset": d, "protocol": p, "values": dict(zip(labels, values)),
                     "delta": {lab: {m: v[m] - values[0][m] for m in METRICS}
                               for lab, v in zip(labels[1:], values[1:])}})
    return {"runs": [{"label": lab, "path": os.path.abspath(p)} for lab, p in zip(labels, paths)],
            "metrics": list(METRICS), "rows": rows}


def _cell(value: float, delta: Optional[float]) -> str:
    return f"{value:.1f}" if delta is None else f"{value:.1f} ({delta:+.1f})"


def to_markdown(table: Dict[str, Any]) -> str:
    labels = [r["label"] for r in table["runs"]]
    head = ["dataset", "protocol", "metric", *labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"]:
        for m in METRICS:
            cells = [_cell(row["values"][lab][m], None if i == 0 else row["delta"][lab][m])
                     for i, lab in enumerate(labels)]
            lines.append("| " + " | ".join([row["dataset"], row["protocol"], m, *cells]) + " |")
    return "\n".join(lines) + "\n\nValues in percent; in parentheses, the difference to the " \
        f"first run ({labels[0]}).\n"


def write_outputs(table: Dict[str, Any], out: str) -> Dict[str, str]:
    """Writes the Markdown, CSV, JSON and PNG into ``out``; returns their paths."""
    os.makedirs(out, exist_ok=True)
    labels = [r["label"] for r in table["runs"]]
    paths = {k: os.path.join(out, f"compare.{k}") for k in ("md", "csv", "json", "png")}
    with open(paths["md"], "w", encoding="utf-8") as fh:
        fh.write(to_markdown(table))
    with open(paths["csv"], "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "protocol", "metric", "run", "value", "delta_vs_first"])
        for row in table["rows"]:
            for m in METRICS:
                for i, lab in enumerate(labels):
                    delta = 0.0 if i == 0 else row["delta"][lab][m]
                    w.writerow([row["dataset"], row["protocol"], m, lab,
                                f"{row['values'][lab][m]:.4f}", f"{delta:.4f}"])
    write_json(table, paths["json"])
    _chart(table, paths["png"])
    return paths


def _chart(table: Dict[str, Any], path: str) -> None:
    labels = [r["label"] for r in table["runs"]]
    groups = [(f"{row['protocol']}\n{m}", row) for row in table["rows"] for m in METRICS]
    width = 0.8 / len(labels)
    fig, ax = subplots(figsize=(max(6.0, 0.9 * len(groups) * max(1, len(labels)) / 2), 4))
    for i, lab in enumerate(labels):
        xs = [g + (i - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        ys = [row["values"][lab][name.split("\n")[1]] for name, row in groups]
        ax.bar(xs, ys, width, label=lab)
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    datasets = sorted({row["dataset"] for row in table["rows"]})
    ax.set_title(", ".join(datasets))
    save_figure(fig, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid compare``; returns the exit code."""
    parser = command_parser("vkd-reid compare", __doc__)
    parser.add_argument("runs", nargs="+", help="results.json files or run folders")
    parser.add_argument("--output", required=True, help="folder for compare.{md,csv,json,png}")

    def run() -> int:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        table = compare(args.runs)
        paths = write_outputs(table, args.output)
        print(to_markdown(table))
        print("wrote " + ", ".join(paths.values()))
        return 0

    return guarded(run)


__all__: List[str] = ["compare", "main", "numbered", "read_run", "to_markdown",
                       "write_outputs"]
