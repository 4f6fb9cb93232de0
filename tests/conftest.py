"""Shared fixtures: tiny synthetic datasets on disk, small configs, CPU threads, and the one
way a test needs an optional extra (:func:`require_extra`)."""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
import torch

import vkd_torchreid  # noqa: F401  (registers datasets and models with torchreid)

# One intra-op thread unless VKD_TEST_THREADS says otherwise: the tests' tensors are small,
# and on a busy 2-core machine two OpenMP threads wait at every barrier for the other one to
# be scheduled (a MobileNetV2 forward of two 64 x 32 frames: 9 ms with one thread, 2 s with
# two). Tests of a multi-threaded path set the count they need themselves.
torch.set_num_threads(max(1, int(os.environ.get("VKD_TEST_THREADS", "1"))))

def _in_ci() -> bool:
    """``CI`` set to true (as GitHub Actions, GitLab and ``.ci/run`` do)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_extra(module: str, extra: str) -> ModuleType:
    """``module``, of the optional extra ``extra`` (``pip install vkd_torchreid[extra]``).

    Missing, it skips the calling test (or, called at module level, the whole module); with
    ``CI=true`` in the environment it fails instead, so that a CI run whose extras did not
    install is red, not green with a whole feature untested.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = (f"{module} is missing (the {extra!r} extra: pip install "
                   f"'vkd_torchreid[{extra}]'): {exc}")
        if _in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)
        raise  # not reached: pytest.skip raises


def has_extra(module: str, extra: str) -> bool:
    """Whether ``module`` of the optional extra ``extra`` imports, for a test that checks
    more when it does; with ``CI=true`` a missing one fails the test (see
    :func:`require_extra`)."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if _in_ci():
            pytest.fail(f"CI=true: {module} is missing (the {extra!r} extra): {exc}",
                        pytrace=False)
        return False
    return True


#: The demo's world and schedules at test sizes (with configs/demo.yaml or configs/study.yaml).
TINY_DEMO = [
    "data.height", "32", "data.width", "16", "data.workers", "0", "model.name", "vkd_resnet18",
    "train.batch_size", "8", "sampler.num_instances", "2", "video.seq_len", "4",
    "test.batch_size", "8", "train.stepsize", "[1]", "train.amp", "", "test.amp", "",
    "train.print_freq", "1000", "demo.cams", "2", "demo.tracklets", "1", "demo.frames", "4",
    "demo.val_every", "1", "demo.patience", "1", "demo.student_epoch", "1",
    "demo.student_stepsize", "[]",
]

TINY = ["data.height", "32", "data.width", "16", "data.workers", "0", "use_gpu", "False",
        "model.pretrained", "False", "model.name", "vkd_resnet18", "test.batch_size", "8",
        "train.print_freq", "1000", "train.max_epoch", "2"]


@pytest.fixture(scope="session")
def mars_root(tmp_path_factory):
    """A small synthetic MARS written once per test session (do not modify it)."""
    from vkd_torchreid.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("mars_root")
    counts = write_synthetic("vkd_mars", str(root), ids=8, cams=3, tracklets=2, frames=8, seed=0)
    return str(root), counts


def tiny_config(root: str, save_dir: str, *opts: str):
    """A validated tiny config for CPU tests."""
    from vkd_torchreid.config import build_config

    return build_config("", ["data.root", root, "data.save_dir", save_dir, *TINY,
                             "train.batch_size", "8", "sampler.num_instances", "2",
                             "video.seq_len", "4", *opts])
