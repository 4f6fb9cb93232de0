"""The one module that knows where torchreid lives and what its quirks are.

The PyPI package ``torchreid==0.2.5`` repackages deep-person-reid 1.4.0 under
``torchreid.reid.*``; a GitHub install exposes the same modules as ``torchreid.*``.
Everything else in vkd_torchreid imports torchreid through this module only.
"""
from __future__ import annotations

import importlib
import logging
import warnings
from types import ModuleType
from typing import Any, Callable, Dict

logger = logging.getLogger(__name__)


def _import_root() -> tuple[str, ModuleType]:
    """Returns (root name, root module) of the installed torchreid."""
    with warnings.catch_warnings():
        # torchreid warns at import time that its Cython ranking is missing; we never use it.
        warnings.filterwarnings("ignore", message="Cython evaluation")
        try:
            module = importlib.import_module("torchreid.reid")
            if hasattr(module, "engine"):
                return "torchreid.reid", module
        except ImportError:
            pass
        try:
            module = importlib.import_module("torchreid")
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "vkd_torchreid needs torchreid: `pip install torchreid` (PyPI, >=0.2.5) or "
                "install deep-person-reid from GitHub"
            ) from exc
        return "torchreid", module


TORCHREID_ROOT, torchreid = _import_root()


def _sub(name: str) -> ModuleType:
    return importlib.import_module(f"{TORCHREID_ROOT}.{name}")


data = _sub("data")
engine = _sub("engine")
metrics = _sub("metrics")
models = _sub("models")
optim = _sub("optim")
utils = _sub("utils")
_datasets = _sub("data.datasets")
_video_datasets = _sub("data.datasets.video")
_rank = _sub("metrics.rank")
_sampler = _sub("data.sampler")
_optimizer = _sub("optim.optimizer")
_lr_scheduler = _sub("optim.lr_scheduler")

Engine = engine.Engine
VideoDataManager = data.VideoDataManager
VideoDataset = data.VideoDataset
ImageDataset = data.ImageDataset
build_train_sampler = _sampler.build_train_sampler
TORCHREID_SAMPLERS: tuple[str, ...] = tuple(_sampler.AVAI_SAMPLERS)
build_optimizer = optim.build_optimizer
build_lr_scheduler = optim.build_lr_scheduler
#: ``train.optim`` and ``train.lr_scheduler`` values: torchreid's optimisers and schedulers.
TORCHREID_OPTIMIZERS: tuple[str, ...] = tuple(_optimizer.AVAI_OPTIMS)
TORCHREID_SCHEDULERS: tuple[str, ...] = tuple(_lr_scheduler.AVAI_SCH)
#: torchreid's own iLIDS-VID and PRID2011 classes: our loaders call their per-person tracklet
#: parsing (``process_data`` / ``process_dir``), and the tests compare with the whole classes.
TorchreidILIDSVID = _video_datasets.iLIDSVID
TorchreidPRID2011 = _video_datasets.PRID2011
MetricMeter = utils.MetricMeter
AverageMeter = utils.AverageMeter
re_ranking = utils.re_ranking
visualize_ranked_results = utils.visualize_ranked_results
compute_model_complexity = utils.compute_model_complexity
#: torchreid's own ranking (pure Python in the PyPI package): the reference our tests and
#: benchmarks compare against.
torchreid_evaluate_rank: Callable[..., Any] = _rank.evaluate_rank
torchreid_compute_distance_matrix = metrics.compute_distance_matrix


def _registry(module: ModuleType, attr: str) -> Dict[str, Any]:
    table = getattr(module, attr, None)
    if not isinstance(table, dict):  # pragma: no cover - guards a torchreid refactor
        raise RuntimeError(
            f"torchreid {torchreid.__name__} has no {attr} table in {module.__name__}; "
            "this torchreid version is not supported by vkd_torchreid"
        )
    return table


def video_dataset_names() -> list[str]:
    """Names of all video datasets torchreid knows (its own and ours)."""
    return sorted(_registry(_datasets, "__video_datasets"))


def register_video_dataset(name: str, dataset_cls: type) -> None:
    """Registers a video dataset with torchreid; registering the same class again is a no-op.

    Raises:
        ValueError: ``name`` is already taken by a different class.
    """
    table = _registry(_datasets, "__video_datasets")
    current = table.get(name)
    if current is dataset_cls or (
        current is not None and current.__qualname__ == dataset_cls.__qualname__
        and current.__module__ == dataset_cls.__module__
    ):
        table[name] = dataset_cls
        return
    if current is not None:
        raise ValueError(f"torchreid already has a video dataset named {name!r}: {current}")
    _datasets.register_video_dataset(name, dataset_cls)


def register_model(name: str, builder: Callable[..., Any]) -> None:
    """Registers a model builder so that ``torchreid.models.build_model(name, ...)`` finds it.

    torchreid has no public model registry: its ``build_model`` reads the module-level
    ``__model_factory`` dict, which is what this function extends. Re-registering a name
    replaces the builder (safe on re-import).
    """
    table = _registry(models, "__model_factory")
    table[name] = builder


def model_names() -> list[str]:
    """Names of all models ``torchreid.models.build_model`` can build."""
    return sorted(_registry(models, "__model_factory"))
