"""PRID2011 (Hirzer et al., SCIA 2011): two static cameras, multi-shot tracklets.

torchreid's layout and protocol: ``prid_2011/multi_shot/cam_a`` holds 385 people and ``cam_b``
749; only the first 200 are seen by both. Which people count is decided by
``splits_prid2011.json`` (torchreid's split file, distributed with deep-person-reid: ten splits
of the 178 people its authors kept from the 200 of both cameras, half train, half test):
``[{"train": [<person folder>...], "test": [...]}, ...]``. Query: the test people's ``cam_a``
tracklets; gallery: their ``cam_b`` tracklets. ``data.split_id`` (0-9) chooses the split.

Swapped camera folders are refused: ``cam_a`` holds fewer people than ``cam_b`` in PRID2011, so
a ``cam_a`` with more person folders than ``cam_b`` is a swap (the queries would come from the
wrong camera). The tracklets come from torchreid's ``PRID2011.process_dir`` (see
:mod:`.twocam`); the split file is read here with one-line errors (torchreid's ``read_json``
raises a bare ``FileNotFoundError``/``JSONDecodeError``).
"""
from __future__ import annotations

import json
import os
from typing import Any, List, Tuple

from vkd_torchreid.compat import TorchreidPRID2011
from vkd_torchreid.data.base import Splits, VKDVideoDataset, require_dir, require_file
from vkd_torchreid.data.registry import register_dataset
from vkd_torchreid.data.twocam import check_split_id, person_dirs, two_camera_splits

SPLIT_FILE = "splits_prid2011.json"


def read_splits(path: str) -> List[Tuple[List[str], List[str]]]:
    """(train, test) person folder lists of every split in the json split file ``path``.

    Raises:
        ValueError: not json, or not a list of ``{"train": [names], "test": [names]}``.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            content = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read json file {path}: {exc}") from exc
    if not isinstance(content, list) or not content:
        raise ValueError(f"{path}: expected a non-empty list of splits "
                         '[{"train": [...], "test": [...]}, ...]')
    out = []
    for i, split in enumerate(content):
        lists = []
        for key in ("train", "test"):
            names = split.get(key) if isinstance(split, dict) else None
            if not isinstance(names, list) or not names or not all(
                    isinstance(n, str) and n for n in names):
                raise ValueError(f"{path}: split {i} needs a non-empty list of person folder "
                                 f"names under {key!r}")
            lists.append(names)
        out.append((lists[0], lists[1]))
    return out


@register_dataset("vkd_prid2011")
class PRID2011(VKDVideoDataset):
    """PRID2011 under ``root/prid2011`` (option ``split_id``, 0-9)."""

    dataset_dir = "prid2011"
    OPTIONS = ("split_id",)
    LAYOUT = """\
prid2011/
  prid_2011/multi_shot/cam_a/<person_NNNN>/*.png   (385 people; cam_a has fewer than cam_b)
  prid_2011/multi_shot/cam_b/<person_NNNN>/*.png   (749 people; the first 200 are in both)
  splits_prid2011.json       [{"train": [person folders], "test": [...]}, ...] (10 splits)"""

    @classmethod
    def parse(cls, dataset_dir: str, split_id: int = 0, **unused: Any) -> Splits:
        """Reads split ``split_id`` of PRID2011 at ``dataset_dir`` (``root/prid2011``)."""
        shots = os.path.join(dataset_dir, "prid_2011", "multi_shot")
        cam_a = require_dir(os.path.join(shots, "cam_a"), cls.LAYOUT)
        cam_b = require_dir(os.path.join(shots, "cam_b"), cls.LAYOUT)
        path = require_file(os.path.join(dataset_dir, SPLIT_FILE), cls.LAYOUT)
        n_a, n_b = len(person_dirs(cam_a)), len(person_dirs(cam_b))
        if n_a > n_b:
            raise ValueError(f"{shots}: cam_a holds {n_a} person folders and cam_b {n_b}; in "
                             "PRID2011 cam_a holds fewer (385 against 749): are cam_a and cam_b "
                             "swapped?")
        splits = read_splits(path)
        train, test = splits[check_split_id(split_id, len(splits), path)]
        return two_camera_splits(TorchreidPRID2011.process_dir,
                                 {"cam_a_dir": cam_a, "cam_b_dir": cam_b}, (cam_a, cam_b),
                                 train, test)
