"""iLIDS-VID (Wang et al., ECCV 2014): 300 people, one tracklet each in two airport cameras.

torchreid's layout and protocol: the official ``train_test_splits_ilidsvid.mat`` (key
``ls_set``: 10 rows, each a permutation of the 1-based positions of the sorted ``cam1`` person
folders) gives ten splits; the first half of a row is the test people, the rest the training
people. Query: the test people's ``cam1`` tracklets; gallery: their ``cam2`` tracklets.
``data.split_id`` (0-9) chooses the row.

torchreid's ``iLIDSVID.prepare_split`` turns the ``.mat`` into ``splits.json`` inside the dataset
folder; we apply the same rule in memory instead (it asserts exactly 10 splits of 300 people,
so it cannot read a smaller world, and it writes into the dataset folder). The tracklets
themselves come from torchreid's ``iLIDSVID.process_data`` (see :mod:`.twocam`).
"""
from __future__ import annotations

import os
from typing import Any, List, Tuple

import numpy as np

from vkd_torchreid.compat import TorchreidILIDSVID
from vkd_torchreid.data.base import Splits, VKDVideoDataset, require_dir, require_file
from vkd_torchreid.data.io import load_mat
from vkd_torchreid.data.registry import register_dataset
from vkd_torchreid.data.twocam import check_split_id, person_dirs, two_camera_splits

SPLIT_FILE = os.path.join("train-test people splits", "train_test_splits_ilidsvid.mat")
SPLIT_KEY = "ls_set"


def read_ls_set(path: str, num_people: int) -> np.ndarray:
    """The ``ls_set`` table of the split file: ``[num_splits, num_people]`` 1-based positions.

    Raises:
        ValueError: unreadable file, no ``ls_set``, or a row that is not a permutation of
            ``1..num_people``.
    """
    table = load_mat(path, SPLIT_KEY)
    if table.ndim != 2 or table.shape[0] < 1 or table.dtype.kind not in "iuf":
        raise ValueError(f"{path}: {SPLIT_KEY} must be a 2-D table of numbers [splits, people], "
                         f"got shape {table.shape} of {table.dtype}")
    if table.shape[1] != num_people:
        raise ValueError(f"{path}: {SPLIT_KEY} has {table.shape[1]} columns but there are "
                         f"{num_people} person folders in cam1")
    expected = np.arange(1, num_people + 1)
    for row, values in enumerate(table):
        if not np.array_equal(np.sort(values), expected):
            raise ValueError(f"{path}: {SPLIT_KEY} row {row + 1} is not a permutation of "
                             f"1..{num_people}")
    return table.astype(np.int64)


def split_dirs(table: np.ndarray, split_id: int, people: List[str]) -> Tuple[List[str],
                                                                            List[str]]:
    """(train, test) person folders of row ``split_id``: torchreid's ``prepare_split`` rule
    (first half test, the rest train, each sorted by position)."""
    half = table.shape[1] // 2
    row = table[split_id]
    train = [people[i - 1] for i in sorted(row[half:].tolist())]
    test = [people[i - 1] for i in sorted(row[:half].tolist())]
    return train, test


@register_dataset("vkd_ilidsvid")
class ILIDSVID(VKDVideoDataset):
    """iLIDS-VID under ``root/ilids-vid`` (option ``split_id``, 0-9)."""

    dataset_dir = "ilids-vid"
    OPTIONS = ("split_id",)
    LAYOUT = """\
ilids-vid/
  i-LIDS-VID/sequences/cam1/<person>/*.png       one tracklet per person and camera
  i-LIDS-VID/sequences/cam2/<person>/*.png       (the same person folders in both cameras)
  train-test people splits/train_test_splits_ilidsvid.mat
                                  key ls_set: 10 rows, each a permutation of the 1-based
                                  positions of the sorted cam1 person folders; the first half
                                  of a row is the test people"""

    @classmethod
    def parse(cls, dataset_dir: str, split_id: int = 0, **unused: Any) -> Splits:
        """Reads split ``split_id`` of iLIDS-VID at ``dataset_dir`` (``root/ilids-vid``)."""
        seq = os.path.join(dataset_dir, "i-LIDS-VID", "sequences")
        cam1 = require_dir(os.path.join(seq, "cam1"), cls.LAYOUT)
        cam2 = require_dir(os.path.join(seq, "cam2"), cls.LAYOUT)
        mat = require_file(os.path.join(dataset_dir, SPLIT_FILE), cls.LAYOUT)
        people = person_dirs(cam1)
        missing = sorted(set(people) ^ set(person_dirs(cam2)))
        if missing:
            where = cam2 if missing[0] in people else cam1
            raise FileNotFoundError(f"missing person folder {os.path.join(where, missing[0])}: "
                                    "cam1 and cam2 must hold the same person folders")
        table = read_ls_set(mat, len(people))
        train, test = split_dirs(table, check_split_id(split_id, len(table), mat), people)
        return two_camera_splits(TorchreidILIDSVID.process_data,
                                 {"cam_1_path": cam1, "cam_2_path": cam2}, (cam1, cam2),
                                 train, test)
