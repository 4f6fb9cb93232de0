"""Packaging: PEP 621 metadata with one version, the extras, the vkd-reid command and its
grammar, and the configs shipped as package data and found by name."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys

import pytest

import vkd_torchreid
from vkd_torchreid import cli
from vkd_torchreid.config import build_config, resolve_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    tomllib = None


@pytest.fixture(scope="module")
def pyproject():
    if tomllib is None:
        pytest.skip("tomllib needs Python >= 3.11")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def test_metadata_is_pep621_with_one_version(pyproject):
    project = pyproject["project"]
    assert project["name"] == "vkd_torchreid" and project["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "vkd_torchreid.__version__"}
    assert not os.path.exists(os.path.join(REPO, "setup.py"))
    assert importlib.metadata.version("vkd_torchreid") == vkd_torchreid.__version__
    assert project["scripts"]["vkd-reid"] == "vkd_torchreid.cli:main"


def test_extras(pyproject):
    extras = pyproject["project"]["optional-dependencies"]
    assert {"test", "dev", "export", "search", "analysis", "all"} <= set(extras)
    assert any(d.startswith("ruff") for d in extras["dev"])
    assert not any(d.startswith("ruff") for d in extras["test"])
    assert extras["all"] == ["vkd_torchreid[export,search,analysis]"]
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as fh:
        ci = fh.read()
    assert '-e ".[test,dev,all]"' in ci


def test_every_package_on_disk_is_listed(pyproject):
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    on_disk = {"vkd_torchreid.configs"}
    for folder, _, files in os.walk(os.path.join(REPO, "vkd_torchreid")):
        if "__init__.py" in files:
            on_disk.add(os.path.relpath(folder, REPO).replace(os.sep, "."))
    assert listed == on_disk
    assert pyproject["tool"]["setuptools"]["package-dir"] == {"vkd_torchreid.configs": "configs"}


def test_packaged_configs_are_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for name in ("vkd_mars_r50", "vkd_mars_r50.yaml"):
        path = resolve_config_file(name)
        with open(path, encoding="utf-8") as fh, open(
                os.path.join(REPO, "configs", "vkd_mars_r50.yaml"), encoding="utf-8") as ref:
            assert fh.read() == ref.read()
    cfg = build_config("vkd_mars_r50")  # _BASE_ chains resolve next to the packaged file
    assert cfg.vkd.stage == "student" and cfg.train.max_epoch == 500
    (tmp_path / "vkd_mars_r50.yaml").write_text("_BASE_: " + resolve_config_file(
        "vkd_mars_r50") + "\ntrain:\n  max_epoch: 7\n", encoding="utf-8")
    assert build_config("vkd_mars_r50.yaml").train.max_epoch == 7  # a local file wins
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        build_config("no_such_config")


def test_command_grammar(capsys, mars_root, tmp_path):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "vkd-reid [COMMAND]" in out and all(c in out for c in ("train", "eval", "study"))
    save = str(tmp_path / "e")
    # 'eval' implies --eval-only; a first argument that is not a command means 'train'
    code = cli.main(["eval", "--root", mars_root[0], "data.save_dir", save])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "model.load_weights" in err
    code = cli.main(["--root", mars_root[0], "data.save_dir", save, "train.lr", "-1"])
    assert code == cli.EXIT_ERROR and "train.lr" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess that imports torch
def test_console_script_runs():
    exe = shutil.which("vkd-reid") or os.path.join(os.path.dirname(sys.executable), "vkd-reid")
    if not os.path.exists(exe):
        pytest.skip("the vkd-reid console script is not installed (pip install -e .)")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "commands:" in out.stdout
