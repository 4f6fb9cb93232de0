"""Our datasets by the name torchreid knows them under (``vkd_mars``...).

Each dataset module registers its class with :func:`register_dataset`; importing
``vkd_torchreid.data`` imports them all, and the package root registers them with torchreid.
"""
from __future__ import annotations

from typing import Callable, Dict, TypeVar

T = TypeVar("T", bound=type)

#: Dataset name -> class (a :class:`~vkd_torchreid.data.base.VKDVideoDataset`).
DATASETS: Dict[str, type] = {}


def register_dataset(name: str) -> Callable[[T], T]:
    """Class decorator: registers a dataset class under ``name``."""

    def add(cls: T) -> T:
        if DATASETS.get(name, cls) is not cls:
            raise ValueError(f"dataset name {name!r} is already taken by {DATASETS[name]}")
        DATASETS[name] = cls
        cls.NAME = name  # type: ignore[attr-defined]  (named in its errors)
        return cls

    return add


def dataset_class(name: str) -> type:
    """The class registered under ``name``; ValueError naming the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]
