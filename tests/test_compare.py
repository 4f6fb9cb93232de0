"""``vkd-reid compare``: runs side by side from results.json files and run folders."""
from __future__ import annotations

import csv
import json
import os

import pytest
from PIL import Image

from vkd_torchreid import cli
from vkd_torchreid.engine.evaluator import results_record
from vkd_torchreid.utils.jsonio import write_json


def _run(folder, i2v, v2v, extra=None):
    per = {"vkd_mars": {"I2V": dict(zip(("rank1", "mAP", "mAP_mars"), i2v)),
                        "V2V": dict(zip(("rank1", "mAP", "mAP_mars"), v2v))}}
    if extra:
        per["vkd_duke"] = extra
    os.makedirs(folder, exist_ok=True)
    write_json(results_record(per, "student"), os.path.join(folder, "results.json"))
    return folder


def test_compare_table_deltas_and_files(tmp_path, capsys):
    teacher = _run(str(tmp_path / "teacher"), (0.50, 0.40, 0.38), (0.60, 0.45, 0.43))
    student = _run(str(tmp_path / "student"), (0.65, 0.51, 0.48), (0.75, 0.55, 0.53),
                   extra={"V2V": {"rank1": 0.1, "mAP": 0.1, "mAP_mars": 0.1}})
    out = str(tmp_path / "cmp")
    # a run folder and a results.json file; Duke is only in one run: left out
    assert cli.main(["compare", teacher, os.path.join(student, "results.json"),
                     "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "| vkd_mars | I2V | rank1 | 50.0 | 65.0 (+15.0) |" in printed
    with open(os.path.join(out, "compare.json"), encoding="utf-8") as fh:
        table = json.load(fh)
    assert [r["label"] for r in table["runs"]] == ["teacher", "student"]
    assert [(r["dataset"], r["protocol"]) for r in table["rows"]] == [("vkd_mars", "I2V"),
                                                                     ("vkd_mars", "V2V")]
    v2v = table["rows"][1]
    assert v2v["values"]["student"]["mAP_mars"] == pytest.approx(53.0)
    assert v2v["delta"]["student"]["mAP"] == pytest.approx(55.0 - 45.0)
    with open(os.path.join(out, "compare.csv"), encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 2  # protocols x metrics x runs
    assert float(next(r for r in rows if r["run"] == "student" and r["protocol"] == "I2V"
                      and r["metric"] == "mAP")["delta_vs_first"]) == pytest.approx(11.0)
    with Image.open(os.path.join(out, "compare.png")) as img:
        assert img.size[0] > 300 and img.size[1] > 200


def test_same_folder_names_are_numbered(tmp_path):
    a = _run(str(tmp_path / "x" / "run"), (0.1, 0.1, 0.1), (0.2, 0.2, 0.2))
    b = _run(str(tmp_path / "y" / "run"), (0.3, 0.3, 0.3), (0.4, 0.4, 0.4))
    from vkd_torchreid.apps.analysis.compare import compare

    assert [r["label"] for r in compare([a, b])["runs"]] == ["run#1", "run#2"]


def test_bad_inputs_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["compare", str(empty), "--output", out]) == 2
    assert "no results.json there" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"stage": "teacher", "epoch": 3}')
    assert cli.main(["compare", str(bad), "--output", out]) == 2
    assert "does not hold" in capsys.readouterr().err
    a = _run(str(tmp_path / "a"), (0.1, 0.1, 0.1), (0.2, 0.2, 0.2))
    other = tmp_path / "b"
    other.mkdir()
    write_json(results_record({"vkd_veri": {"I2I": {"rank1": 0.5, "mAP": 0.4,
                                                    "mAP_mars": 0.4}}}, "teacher"),
               str(other / "results.json"))
    assert cli.main(["compare", a, str(other), "--output", out]) == 2
    assert "no (dataset, protocol) in common" in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.mark.parametrize("edit,parts", [
    (lambda text: text.replace('"mAP": 0.1', '"mAP": null', 1),
     ["vkd_mars.I2V.mAP is null, expected a number"]),
    (lambda text: text.replace('"rank1": 0.1', '"rank1": "high"', 1),
     ['vkd_mars.I2V.rank1 is "high", expected a number']),
    (lambda text: text[:len(text) // 2], ["not valid JSON: ", "line ", "column "]),
    (lambda text: "", ["an empty file, expected JSON"]),
])
def test_a_broken_results_file_is_one_line_naming_it(tmp_path, capsys, edit, parts):
    run = _run(str(tmp_path / "a"), (0.1, 0.1, 0.1), (0.2, 0.2, 0.2))
    good = _run(str(tmp_path / "b"), (0.3, 0.3, 0.3), (0.4, 0.4, 0.4))
    path = os.path.join(run, "results.json")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(edit(text))
    out = str(tmp_path / "cmp")
    assert cli.main(["compare", good, run, "--output", out]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), captured.err
    assert "Traceback" not in captured.err and all(p in lines[0] for p in parts), lines[0]
    assert not os.path.exists(out)
