"""vkd_torchreid: Views Knowledge Distillation (Porrello et al., ECCV 2020) for torchreid.

Importing the package registers our datasets (``vkd_mars``, ``vkd_duke``, ``vkd_veri``,
``vkd_atrw``, ``vkd_ilidsvid``, ``vkd_prid2011``) and models (``vkd_resnet50``...) with torchreid. Re-importing is safe.
"""
from __future__ import annotations

import logging

from vkd_torchreid import compat

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def register_all() -> None:
    """Registers our datasets and models with torchreid (idempotent)."""
    from vkd_torchreid.data import DATASETS
    from vkd_torchreid.models import MODEL_BUILDERS

    for name, cls in DATASETS.items():
        compat.register_video_dataset(name, cls)
    for name, builder in MODEL_BUILDERS.items():
        compat.register_model(name, builder)


register_all()


def __getattr__(name: str) -> object:
    """``vkd_torchreid.FeatureExtractor``, imported on first use (it pulls in the apps)."""
    if name == "FeatureExtractor":
        from vkd_torchreid.apps.features import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'vkd_torchreid' has no attribute {name!r}")
