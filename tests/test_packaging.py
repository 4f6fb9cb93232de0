"""Packaging: PEP 621 metadata with one version, the setup.py shim that defers to it (``pip
install -e .`` and ``python setup.py develop`` both work, into throwaway targets, offline), the
extras, the vkd-reid command and its grammar, and the configs shipped as package data and found
by name."""
from __future__ import annotations

import ast
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
    assert importlib.metadata.version("vkd_torchreid") == vkd_torchreid.__version__
    assert project["scripts"]["vkd-reid"] == "vkd_torchreid.cli:main"


#: What an install needs from the repository (a copy is installed: nothing is written here).
PROJECT_FILES = ("setup.py", "pyproject.toml", "README.md", "vkd_torchreid", "configs")
#: pip without the network and without an isolated build environment (it would need the index).
OFFLINE_PIP = {"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture
def project(tmp_path):
    """A copy of the project's installable files in ``tmp_path/src``."""
    src = tmp_path / "src"
    src.mkdir()
    for name in PROJECT_FILES:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(path, src / name)
    return src


def _run(args, cwd, **env):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_setup_py_is_a_shim_over_the_pep621_metadata(project, tmp_path):
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as fh:
        body = ast.parse(fh.read()).body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    # no metadata of its own: `from setuptools import setup; setup()`
    assert [ast.dump(node) for node in body] == [ast.dump(node) for node in ast.parse(
        "from setuptools import setup\nsetup()").body]
    out = _run([sys.executable, "setup.py", "--version"], project)
    assert out.strip().splitlines()[-1] == vkd_torchreid.__version__
    egg = tmp_path / "egg"
    egg.mkdir()
    _run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg)], project)
    info = egg / "vkd_torchreid.egg-info"
    pkg_info = (info / "PKG-INFO").read_text(encoding="utf-8")
    assert "Name: vkd_torchreid" in pkg_info
    assert f"Version: {vkd_torchreid.__version__}" in pkg_info
    assert "vkd-reid = vkd_torchreid.cli:main" in (info / "entry_points.txt").read_text()
    assert "torchreid>=0.2.5" in (info / "requires.txt").read_text().splitlines()
    sources_txt = (info / "SOURCES.txt").read_text().splitlines()
    assert "configs/vkd_mars_r50.yaml" in sources_txt  # the configs ship as package data


def _check_editable(target, project):
    """``target`` holds an editable install of ``project``: metadata, console script, and an
    import hook that maps the package and its configs to the copy (checked without site
    packages or PYTHONPATH, so the shared venv and this checkout cannot answer)."""
    script = os.path.join(target, "bin", "vkd-reid")
    with open(script, encoding="utf-8") as fh:
        assert "from vkd_torchreid.cli import main" in fh.read()
    check = (
        "import importlib.metadata, importlib.util, site, sys\n"
        f"site.addsitedir({str(target)!r})\n"
        "print(importlib.util.find_spec('vkd_torchreid').origin)\n"
        "hooks = [f for f in sys.meta_path if 'editable' in getattr(f, '__module__', '')]\n"
        "print(hooks[0].find_spec('vkd_torchreid.configs', None).origin)\n"
        f"print([d.version for d in importlib.metadata.distributions(path=[{str(target)!r}])])\n")
    out = _run([sys.executable, "-I", "-S", "-c", check], os.path.dirname(target)).splitlines()
    assert out == [str(project / "vkd_torchreid" / "__init__.py"),
                   str(project / "configs" / "__init__.py"), str([vkd_torchreid.__version__])]


@pytest.mark.slow  # pip and setuptools in a subprocess
def test_pip_install_editable(project, tmp_path):
    target = tmp_path / "pip-target"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
          "--no-index", "-e", str(project), "--target", str(target)], tmp_path)
    _check_editable(target, project)


@pytest.mark.slow  # pip and setuptools in a subprocess
def test_setup_py_develop(project, tmp_path):
    target = tmp_path / "develop-target"
    _run([sys.executable, "setup.py", "develop", "--no-deps", "--install-dir", str(target)],
         project, **OFFLINE_PIP)
    _check_editable(target, project)


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
