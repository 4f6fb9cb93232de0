"""Datasets, multi-view sampling, decoding/augmentation and the VKD data manager."""
from __future__ import annotations

from vkd_torchreid.data.atrw import ATRW
from vkd_torchreid.data.base import MODES, Protocol, Splits, VKDVideoDataset, clear_cache
from vkd_torchreid.data.duke import DukeVideo
from vkd_torchreid.data.ilidsvid import ILIDSVID
from vkd_torchreid.data.io import CorruptImageError, read_image
from vkd_torchreid.data.mars import Mars
from vkd_torchreid.data.prid2011 import PRID2011
from vkd_torchreid.data.registry import DATASETS, dataset_class, register_dataset
from vkd_torchreid.data.veri import VeRi

__all__ = [
    "ATRW", "DATASETS", "MODES", "CorruptImageError", "DukeVideo", "ILIDSVID", "Mars",
    "PRID2011", "Protocol", "Splits", "VKDVideoDataset", "VeRi", "clear_cache", "dataset_class", "read_image", "register_dataset",
]
