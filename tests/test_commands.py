"""One grammar: every tool is a ``vkd-reid`` subcommand with ``--config-file``, the data
shortcuts and KEY VALUE overrides; ``tools/*.py`` call it; errors are one ``error:`` line,
exit status 2 and no traceback; the demo is a command that a config can declare."""
from __future__ import annotations

import ast
import json
import os
import runpy
import subprocess
import sys

import pytest

from vkd_torchreid import cli
from vkd_torchreid.apps import common, demo, export
from vkd_torchreid.apps.download import EXIT_ERROR as DOWNLOAD_EXIT_ERROR
from vkd_torchreid.config import build_config

from conftest import TINY_DEMO, require_extra

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_YAML = os.path.join(REPO, "configs", "demo.yaml")
WORLD = ["--ids", "4", "--cams", "2", "--tracklets", "1", "--frames", "2"]


def _run(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def _one_error(code, err, *needles):
    assert code == common.EXIT_ERROR, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0] and all(n in err[0] for n in needles), err


# ----------------------------------------------------------------------------- the table

def test_help_lists_every_command(capsys):
    code, out, _ = _run(capsys, ["--help"])
    assert code == 0
    listed = [line.split()[0] for line in out.split("commands:\n", 1)[1].splitlines()
              if line.startswith("  ")]
    assert listed == list(cli.COMMANDS)
    new = {"demo", "check-dataset", "make-synthetic", "model-info", "benchmark"}
    assert new <= set(cli.APP_COMMANDS) and {"train", "eval"} <= set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_its_help(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and f"vkd-reid {command}" in out and "usage:" in out


def test_every_tool_script_is_a_thin_wrapper():
    """Each ``tools/X.py`` (but the developers' tools: the configs writer and the GPU check,
    which runs the CUDA tests) calls ``cli.main`` with its subcommand."""
    expected = {"check_dataset": "check-dataset", "make_synthetic": "make-synthetic",
                "model_info": "model-info", "benchmark": "benchmark", "export": "export",
                "download": "download", "study": "study", "main": None}
    scripts = {f[:-3] for f in os.listdir(os.path.join(REPO, "tools")) if f.endswith(".py")}
    assert scripts - {"make_configs", "gpu_check"} == set(expected)
    for name, command in expected.items():
        with open(os.path.join(REPO, "tools", f"{name}.py"), encoding="utf-8") as fh:
            source = fh.read()
        calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
                 and ast.unparse(n.func) == "cli.main"]
        assert len(calls) == 1, name
        args = ast.unparse(calls[0].args[0])
        assert args == (f"['{command}', *sys.argv[1:]]" if command else "sys.argv[1:]"), name


@pytest.mark.parametrize("script, says", [("check_dataset", "vkd-reid check-dataset"),
                                          ("model_info", "vkd-reid model-info"),
                                          ("main", "commands:")])
def test_tool_scripts_run_their_command(capsys, monkeypatch, script, says):
    monkeypatch.setattr(sys, "argv", [f"tools/{script}.py", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(os.path.join(REPO, "tools", f"{script}.py"), run_name="__main__")
    assert info.value.code == 0 and says in capsys.readouterr().out


@pytest.mark.slow  # subprocesses that import torch
def test_tool_scripts_as_subprocesses(tmp_path):
    root = str(tmp_path / "data")

    def tool(name, *args):
        return subprocess.run([sys.executable, os.path.join(REPO, "tools", f"{name}.py"),
                               *args], capture_output=True, text=True, cwd=REPO, timeout=300)

    made = tool("make_synthetic", "--root", root, "-s", "vkd_duke", *WORLD)
    assert made.returncode == 0 and made.stdout.startswith("vkd_duke: "), made.stderr
    checked = tool("check_dataset", "--root", root, "-s", "vkd_duke", "--no-decode")
    assert checked.returncode == 0 and f"vkd_duke at {root}: ok" in checked.stdout
    helped = tool("main", "--help")
    assert helped.returncode == 0 and "check-dataset" in helped.stdout


# ----------------------------------------------------------------------------- new commands

def test_make_synthetic_then_check_dataset(capsys, tmp_path):
    root = str(tmp_path / "data")
    code, out, err = _run(capsys, ["make-synthetic", "--root", root, "-s", "vkd_mars",
                                   "vkd_veri", *WORLD])
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == ["vkd_mars", "vkd_veri"]
    assert os.path.isdir(os.path.join(root, "mars")) and os.path.isdir(os.path.join(root, "VeRi"))
    # the shortcuts are the data.* keys: both spellings check the same datasets
    for argv in (["--root", root, "-s", "vkd_mars", "vkd_veri"],
                 ["data.root", root, "data.sources", "[vkd_mars]", "data.targets",
                  "[vkd_mars, vkd_veri]"]):
        code, out, err = _run(capsys, ["check-dataset", *argv])
        assert code == 0, err
        assert f"vkd_mars at {root}: ok" in out and f"vkd_veri at {root}: ok" in out
        assert out.count("split ") == 2
    frames = os.path.join(root, "mars", "bbox_train")
    pid = os.path.join(frames, sorted(os.listdir(frames))[0])
    bad = os.path.join(pid, sorted(os.listdir(pid))[0])
    with open(bad, "wb") as fh:
        fh.write(b"not a jpeg")
    code, out, _ = _run(capsys, ["check-dataset", "--root", root, "-s", "vkd_mars"])
    assert code == 1 and bad in out and f"1 problem(s) in vkd_mars at {root}" in out
    # the existence check alone does not decode
    assert _run(capsys, ["check-dataset", "--root", root, "-s", "vkd_mars", "--no-decode"])[0] == 0


def test_check_dataset_takes_dataset_options_from_the_config(capsys, tmp_path):
    root = str(tmp_path / "data")
    assert _run(capsys, ["make-synthetic", "--root", root, "-s", "vkd_duke", "--ids", "4",
                         "--cams", "2", "--tracklets", "2", "--frames", "2"])[0] == 0
    rows = {}
    for mode in ("folder", "reference"):
        code, out, err = _run(capsys, ["check-dataset", "--root", root, "-s", "vkd_duke",
                                       "--no-decode", "data.duke_tracklets", mode])
        assert code == 0, err
        rows[mode] = [line.split() for line in out.splitlines() if line.startswith("train ")]
    # 'reference' merges each identity's two consecutive tracklet folders per camera into one
    assert int(rows["folder"][0][2]) == 2 * int(rows["reference"][0][2])


def test_model_info_reads_the_config(capsys):
    code, out, err = _run(capsys, ["model-info", "--num-classes", "10", "model.name",
                                   "vkd_mobilenetv2", "data.height", "64", "data.width", "32"])
    assert code == 0, err
    lines = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}
    assert lines["model"] == "vkd_mobilenetv2 (10 classes)" and lines["input"] == "64x32"


@pytest.mark.slow  # a benchmark run
def test_benchmark_runs_as_a_subcommand(capsys, tmp_path):
    out_json = str(tmp_path / "bench.json")
    code, out, err = _run(capsys, ["benchmark", "search", "--search-sizes", "300",
                                   "--search-dim", "8", "--search-queries", "16",
                                   "--json", out_json])
    assert code == 0, err
    with open(out_json, encoding="utf-8") as fh:
        rows = json.load(fh)["search"]["rows"]
    assert rows and rows[0]["gallery"] == 300 and rows[0]["queries_per_s"] > 0


# ----------------------------------------------------------------------------- the demo

def test_a_config_that_declares_the_demo_runs_the_demo(capsys, monkeypatch, tmp_path):
    """``tools/main.py --config-file configs/demo.yaml`` (no command) is ``vkd-reid demo``;
    ``train`` with the same config does not run the demo."""
    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda cfg: seen.append(cfg))
    save = str(tmp_path / "log")
    argv = ["--config-file", DEMO_YAML, "data.save_dir", save, *TINY_DEMO]
    assert cli.implied_command(argv) == "demo"
    assert cli.implied_command(["--config-file", "vkd_mars_r50"]) == "train"
    assert cli.implied_command(["--config-file", "vkd_mars_r50", "demo.enabled", "True"]) == "demo"
    assert cli.implied_command(["data.no_such_key", "1"]) == "train"  # train reports it
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    assert len(seen) == 1 and seen[0].data.save_dir == save and seen[0].data.height == 32
    with open(os.path.join(save, common.CONFIG_FILE), encoding="utf-8") as fh:
        assert fh.read() == seen[0].dump()
    assert _run(capsys, ["demo", "--config-file", DEMO_YAML, "data.save_dir", save,
                         *TINY_DEMO])[0] == 0 and len(seen) == 2
    code, _, err = _run(capsys, ["train", "--config-file", DEMO_YAML,
                                 "--root", str(tmp_path / "none"), "data.save_dir", save])
    _one_error(code, err, str(tmp_path / "none"))
    assert len(seen) == 2


def test_demo_refuses_what_does_not_apply(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "run_demo", lambda cfg: pytest.fail("the demo ran"))
    save = str(tmp_path / "log")
    code, _, err = _run(capsys, ["demo", "data.save_dir", save, "model.resume", "x.pth"])
    _one_error(code, err, "model.resume")
    code, _, err = _run(capsys, ["--resume", "--config-file", DEMO_YAML, "data.save_dir", save])
    _one_error(code, err, "--resume")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = _run(capsys, ["demo", "data.save_dir", save])
    _one_error(code, err, "torchrun")
    assert not os.path.exists(save)


# ----------------------------------------------------------------------------- errors

#: A command line of each command that gets as far as reading its config.
CONFIG_COMMANDS = {
    "train": [], "eval": [], "demo": [], "study": [], "check-dataset": [],
    "make-synthetic": [], "model-info": [],
    "search": ["--weights", "w.pth", "--query", "q.jpg", "--gallery", "g"],
    "export": ["--output", "x.onnx"],
    "explain": ["--weights", "w.pth", "--output", "o"],
    "camera-bias": ["--weights", "w.pth", "--output", "o"],
    "gallery-curve": ["--weights", "w.pth", "--output", "o"],
    "rank-list": ["--weights", "w.pth", "--output", "o"],
    "splits": ["--config-file", "teacher_ilidsvid_r50"],
}


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_config_errors_are_one_line(capsys, monkeypatch, tmp_path, command):
    if command == "export":
        require_extra("onnxruntime", "export")
        require_extra("onnxscript", "export")
    monkeypatch.chdir(tmp_path)  # nothing is written: checked below
    argv = [command, *CONFIG_COMMANDS[command]]
    _one_error(*_run(capsys, [*argv, "data.no_such_key", "1"])[::2], "data.no_such_key")
    _one_error(*_run(capsys, [*argv, "train.lr", "-1.0"])[::2], "train.lr")
    _one_error(*_run(capsys, [*argv, "--no-such-flag"])[::2], f"vkd-reid {command}",
               "--no-such-flag")
    _one_error(*_run(capsys, [*argv, "--config-file", "no_such_config"])[::2], "no_such_config")
    assert os.listdir(tmp_path) == []


def test_other_errors_are_one_line(capsys, tmp_path):
    missing = str(tmp_path / "none")
    code, _, err = _run(capsys, ["check-dataset", "--root", missing])
    _one_error(code, err, missing, "data.root")
    code, _, err = _run(capsys, ["check-dataset", "--root", str(tmp_path), "-s", "vkd_veri"])
    _one_error(code, err, os.path.join(str(tmp_path), "VeRi"))
    assert "expected layout" not in err[0]
    code, _, err = _run(capsys, ["make-synthetic", "--root", str(tmp_path), "--ids", "1"])
    _one_error(code, err, "ids")
    code, _, err = _run(capsys, ["compare", missing, "--output", str(tmp_path / "o")])
    _one_error(code, err, missing)
    code, _, err = _run(capsys, ["compare"])
    _one_error(code, err, "vkd-reid compare", "runs")


def test_one_exit_status_and_one_config_loader():
    """No module but ``apps/common.py`` defines the error exit or loads a config with the
    applications' sections itself."""
    assert cli.EXIT_ERROR is export.EXIT_ERROR is DOWNLOAD_EXIT_ERROR is common.EXIT_ERROR == 2
    offenders = []
    for folder, _, files in os.walk(os.path.join(REPO, "vkd_torchreid")):
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or path.endswith(os.path.join("apps", "common.py")):
                continue
            with open(path, encoding="utf-8") as fh:
                source = fh.read()
            if "EXIT_ERROR = " in source or "[DEMO_CONFIG]" in source.replace(
                    "``[DEMO_CONFIG]``", ""):
                offenders.append(os.path.relpath(path, REPO))
    assert offenders == []


# ----------------------------------------------------------------------------- the parser

def test_overrides_start_at_the_first_config_key_that_is_no_option_value():
    parser = common.command_parser("t", "")
    parser.add_argument("--weights", action="append")
    parser.add_argument("--frames", nargs="+")
    parser.add_argument("--resume", nargs="?", const="latest")
    common.add_config_arguments(parser)
    argv = ["--weights", "model.pth", "--resume", "--frames", "1", "2", "all", "-s",
            "vkd_mars", "vkd_duke", "data.root", "r", "use_gpu", "False"]
    own, opts = common.split_overrides(argv, parser)
    assert own == argv[:10] and opts == ["data.root", "r", "use_gpu", "False"]
    args = common.parse(parser, argv)
    assert args.weights == ["model.pth"] and args.frames == ["1", "2", "all"]
    assert args.resume == "latest" and args.opts == opts
    cfg = common.config_of(args)
    assert cfg.data.root == "r" and cfg.data.sources == cfg.data.targets == ["vkd_mars",
                                                                             "vkd_duke"]
    # an explicit key wins over its shortcut: it comes later
    args = common.parse(parser, ["--root", "a", "-s", "vkd_mars", "-t", "vkd_veri",
                                 "data.root", "b"])
    cfg = common.config_of(args)
    assert (cfg.data.root, cfg.data.sources, cfg.data.targets) == ("b", ["vkd_mars"],
                                                                    ["vkd_veri"])


def test_derived_configs_are_validated_again():
    cfg = common.load_config(DEMO_YAML)
    out = common.derive(cfg, {"train.max_epoch": 3, "data.root": "/x",
                              "train.stepsize": [1, 2]})
    assert (out.train.max_epoch, out.data.root, out.train.stepsize) == (3, "/x", [1, 2])
    assert cfg.train.max_epoch != 3 and out.is_frozen()
    assert common.derive(cfg, ["train.max_epoch", "4"]).train.max_epoch == 4
    with pytest.raises(ValueError, match="train.lr"):
        common.derive(cfg, {"train.lr": -1.0})
    with pytest.raises(ValueError, match="demo.ids"):  # the applications' sections too
        common.derive(cfg, {"demo.ids": 2})
    with pytest.raises(ValueError, match="vkd.student_frames"):  # rules across keys
        common.derive(cfg, {"vkd.stage": "student", "vkd.teacher_checkpoint": "t.pth",
                            "vkd.student_frames": 8})
    with pytest.raises(KeyError, match="train.no_such_key"):
        common.derive(cfg, {"train.no_such_key": 1})
    assert common.load_config(DEMO_YAML).dump() == build_config(
        DEMO_YAML, (), common.config_extensions()).dump()
