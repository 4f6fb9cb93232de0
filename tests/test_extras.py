"""Optional extras in the tests: a missing one skips its tests, except under ``CI=true``, where
it fails the run (a CI whose extras did not install must not go green with a feature
untested); every test that needs an extra goes through ``conftest.require_extra``/``has_extra``
and names an extra that pyproject.toml declares."""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import has_extra, require_extra

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
MISSING = "vkd_no_such_extra_module"


def test_missing_extra_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=rf"{MISSING} is missing .*vkd_torchreid\[search\]"):
        require_extra(MISSING, "search")
    assert has_extra(MISSING, "search") is False
    assert require_extra("json", "search") is json and has_extra("json", "search")
    for value in ("true", "True", "1"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match=rf"CI=true: {MISSING} is missing"):
            require_extra(MISSING, "search")
        with pytest.raises(pytest.fail.Exception, match=rf"CI=true: {MISSING} is missing"):
            has_extra(MISSING, "search")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_extra(MISSING, "search")


def _extra_calls():
    """(file, module, extra) of every require_extra/has_extra call in the tests."""
    call = re.compile(r"(?:require_extra|has_extra)\(\s*\"([\w.]+)\",\s*\"([\w-]+)\"\s*\)")
    for path in sorted(glob.glob(os.path.join(TESTS, "test_*.py"))):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for module, extra in call.findall(text):
            yield os.path.basename(path), module, extra


def test_every_extra_goes_through_the_helper_and_is_declared():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    calls = list(_extra_calls())
    found = {module for _, module, _ in calls}
    assert {"onnx", "onnxscript", "onnxruntime", "faiss", "pytorch_grad_cam"} <= found, found
    for name, module, extra in calls:
        assert extra in extras and extra != "all", (name, module, extra)
    for path in glob.glob(os.path.join(TESTS, "test_*.py")):  # no other way around the helper
        if os.path.basename(path) == os.path.basename(__file__):
            continue
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        assert "importorskip(\"onnx" not in text and "importorskip(\"faiss" not in text, path
        assert "importorskip(\"pytorch_grad_cam" not in text, path
        assert not re.search(r"find_spec\(\s*[\"'](onnx|faiss|pytorch_grad_cam)", text), path


@pytest.mark.slow  # two pytest subprocesses that import torch
def test_a_module_needing_a_missing_extra_fails_a_ci_run(tmp_path):
    test = tmp_path / "test_needs_extra.py"
    test.write_text(f"from conftest import require_extra\n\nrequire_extra({MISSING!r}, 'search')"
                    "\n\n\ndef test_it():\n    assert False\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, REPO,
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("CI", None)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    local = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    # a module skipped whole: no test ran (pytest's 5), nothing failed
    assert local.returncode in (0, 5) and "1 skipped" in local.stdout, local.stdout + local.stderr
    ci = subprocess.run(argv, cwd=tmp_path, env={**env, "CI": "true"}, capture_output=True,
                        text=True, timeout=300)
    assert ci.returncode not in (0, 5), ci.stdout + ci.stderr
    assert f"CI=true: {MISSING} is missing" in ci.stdout, ci.stdout + ci.stderr
