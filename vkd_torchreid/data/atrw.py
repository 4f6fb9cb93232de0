"""ATRW (Li et al., 2019): Amur tiger re-identification, evaluated with the plain protocol.

Tigers have no camera ids, so the training "views" the multi-view sampler needs are derived.
The option ``atrw_views`` (``data.atrw_views``) picks how:

- ``side`` (default): the flank seen, from the keypoints: visible right-side keypoints
  (right shoulder, front paw, hip, knee, back paw) against visible left-side ones. View/camid
  0 = right flank, 1 = left flank, 2 = unknown (a tie, e.g. a frontal shot or no keypoints).
- ``video``: the ``(frame[0], frame[1])`` video group of the ground truth. Only the *test*
  ground truth has frame information; the training list (``entityid,filename``) has none, so
  for training this falls back to the flank, with a logged warning.
- ``video_side``: video group and flank together; for training, again the flank.

So, with the official files, every value yields the same training tracklets; the option exists
so that a training list with frame information can use it without changing configs.

Training tracklets: one per (tiger, view), images sorted by name, pids relabelled.
Test: every ground-truth image is a query against all others (I2I); ``query_img`` and
``gallery_img`` are the same list (camid 0, entity -1 kept as junk), ``query``/``gallery`` the
same images as one-frame tracklets, and ``Splits.meta`` holds the aligned ``frame_group``
(``frame[0] * 100000 + frame[1]``), ``frame`` (``frame[2]``) and ``query_type`` arrays.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from vkd_torchreid.data.base import (
    LayoutError,
    Protocol,
    Splits,
    VKDVideoDataset,
    relabel,
    require_dir,
    require_file,
)
from vkd_torchreid.data.registry import register_dataset

logger = logging.getLogger(__name__)

#: Keypoint order (mmpose's ATRW): index -> name.
KEYPOINTS = ("left_ear", "right_ear", "nose", "right_shoulder", "right_front_paw",
             "left_shoulder", "left_front_paw", "right_hip", "right_knee", "right_back_paw",
             "left_hip", "left_knee", "left_back_paw", "tail", "center")
RIGHT_SIDE = (3, 4, 7, 8, 9)
LEFT_SIDE = (5, 6, 10, 11, 12)
RIGHT, LEFT, UNKNOWN = 0, 1, 2
FRAME_GROUP_BASE = 100000
GT_NAME = "gt_test_plain.json"
#: Values of ``data.atrw_views``: how training tracklets (and so views) are formed.
ATRW_VIEWS = ("side", "video", "video_side")
KEYPOINT_FORM = "45 numbers (15 keypoints x, y, visibility) or 15 [x, y, visibility] triples"
GT_FORM = '{"imgid": int, "entityid": int, "query": "sing"|"multi", "frame": [a, b, c]}'


def flank(keypoints: Sequence[Any]) -> int:
    """RIGHT, LEFT or UNKNOWN from 15 keypoints (flat 45 numbers or 15 triples).

    Raises:
        ValueError: not 15 keypoints of 3 numbers.
    """
    arr = np.asarray(keypoints, dtype=np.float64)
    if arr.size != 45 or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape != (15, 3)):
        raise ValueError(f"expected {KEYPOINT_FORM}, got shape {arr.shape}")
    visible = arr.reshape(15, 3)[:, 2] > 0
    right, left = int(visible[list(RIGHT_SIDE)].sum()), int(visible[list(LEFT_SIDE)].sum())
    return RIGHT if right > left else LEFT if left > right else UNKNOWN


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read JSON file {path}: {exc}") from exc


def _read_csv(path: str) -> List[Tuple[int, List[str]]]:
    """(line number, fields) of every non-empty row."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [(i, [f.strip() for f in row]) for i, row in enumerate(csv.reader(fh), start=1)
                if row and any(f.strip() for f in row)]


@register_dataset("vkd_atrw")
class ATRW(VKDVideoDataset):
    """ATRW re-ID under ``root/atrw`` (option ``atrw_views``, default ``side``)."""

    dataset_dir = "atrw"
    OPTIONS = ("atrw_views",)
    FRAME_FORMAT = "jpeg"
    #: Random erasing of animals uses the reference's range for non-people (0.7-1.4).
    ERASE_RATIO = (0.7, 1.4)
    LAYOUT = """\
atrw/
  atrw_reid_train/train/*.jpg
  atrw_anno_reid_train/reid_list_train.csv        rows entityid,filename (no header)
  atrw_anno_reid_train/reid_keypoints_train.json  filename -> 15 keypoints (x, y, visibility)
  atrw_reid_test/test/*.jpg
  atrw_anno_reid_test/reid_list_test.csv          filenames only
  atrw_anno_reid_test/reid_keypoints_test.json
  gt_test_plain.json  (or atrw_anno_reid_test/gt_test_plain.json)
                      [{"imgid", "entityid", "query": "sing"|"multi", "frame": [a, b, c]}]"""

    @classmethod
    def parse(cls, dataset_dir: str, atrw_views: str = "side", **unused: Any) -> Splits:
        """Reads ATRW at ``dataset_dir``."""
        if atrw_views not in ATRW_VIEWS:
            raise ValueError(f"atrw_views must be one of {list(ATRW_VIEWS)}, got {atrw_views!r}")
        train = cls._train(dataset_dir, atrw_views)
        items, meta = cls._test(dataset_dir)
        tracklets = [((p,), pid, cam) for p, pid, cam in items]
        for first in (train[0][0][0] if train else "", items[0][0] if items else ""):
            if first and not os.path.isfile(first):
                raise LayoutError(f"missing image {first}", cls.LAYOUT)
        protocol = Protocol(("I2I",), junk="atrw", camera_ids=False)
        return Splits(train=train, query=tracklets, gallery=list(tracklets), query_img=items,
                      gallery_img=list(items), protocol=protocol, meta=meta)

    @classmethod
    def _train(cls, base: str, views: str) -> List[Tuple[Tuple[str, ...], int, int]]:
        image_dir = require_dir(os.path.join(base, "atrw_reid_train", "train"), cls.LAYOUT)
        anno = os.path.join(base, "atrw_anno_reid_train")
        list_path = require_file(os.path.join(anno, "reid_list_train.csv"), cls.LAYOUT)
        kp_path = require_file(os.path.join(anno, "reid_keypoints_train.json"), cls.LAYOUT)
        if views != "side":
            logger.warning("atrw_views=%r: the ATRW training list has no video information; "
                           "training views fall back to the flank ('side')", views)
        keypoints = _read_json(kp_path)
        if not isinstance(keypoints, dict):
            raise ValueError(f"{kp_path}: expected an object filename -> {KEYPOINT_FORM}")
        groups: Dict[Tuple[int, int], List[str]] = defaultdict(list)
        missing = 0
        for line, row in _read_csv(list_path):
            if len(row) != 2 or not _is_int(row[0]) or not row[1]:
                raise ValueError(f"{list_path}: line {line}: expected 'entityid,filename', "
                                 f"got {','.join(row)!r}")
            name = row[1]
            if name in keypoints:
                try:
                    view = flank(keypoints[name])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{kp_path}: entry {name!r}: {exc}") from None
            else:
                missing += 1
                view = UNKNOWN
            groups[(int(row[0]), view)].append(name)
        if missing:
            logger.warning("%s: %d training images have no keypoints; their flank is unknown",
                           kp_path, missing)
        return relabel([(tuple(os.path.join(image_dir, n) for n in sorted(names)), pid, view)
                        for (pid, view), names in sorted(groups.items())])

    @classmethod
    def _test(cls, base: str) -> Tuple[List[Tuple[str, int, int]], Dict[str, np.ndarray]]:
        image_dir = require_dir(os.path.join(base, "atrw_reid_test", "test"), cls.LAYOUT)
        anno = os.path.join(base, "atrw_anno_reid_test")
        list_path = require_file(os.path.join(anno, "reid_list_test.csv"), cls.LAYOUT)
        require_file(os.path.join(anno, "reid_keypoints_test.json"), cls.LAYOUT)
        candidates = [os.path.join(base, GT_NAME), os.path.join(anno, GT_NAME)]
        gt_path = next((p for p in candidates if os.path.isfile(p)), None)
        if gt_path is None:
            raise LayoutError(f"missing file {candidates[0]} (or {candidates[1]})",
                              cls.LAYOUT)
        by_id: Dict[int, str] = {}
        for _, row in _read_csv(list_path):
            stem = os.path.splitext(row[0])[0]
            if _is_int(stem):
                by_id[int(stem)] = row[0]
        gt = _read_json(gt_path)
        if not isinstance(gt, list):
            raise ValueError(f"{gt_path}: expected a list of {GT_FORM}")
        items, groups, frames, kinds = [], [], [], []
        for i, entry in enumerate(gt):
            try:
                imgid, pid, kind = int(entry["imgid"]), int(entry["entityid"]), entry["query"]
                frame = [int(v) for v in entry["frame"]]
                if kind not in ("sing", "multi") or len(frame) != 3:
                    raise ValueError(kind)
            except (TypeError, KeyError, ValueError):
                raise ValueError(f"{gt_path}: entry {i}: expected {GT_FORM}, "
                                 f"got {entry!r}") from None
            name = by_id.get(imgid, f"{imgid:06d}.jpg")
            items.append((os.path.join(image_dir, name), pid, 0))
            groups.append(frame[0] * FRAME_GROUP_BASE + frame[1])
            frames.append(frame[2])
            kinds.append(kind)
        meta = {"frame_group": np.asarray(groups, dtype=np.int64),
                "frame": np.asarray(frames, dtype=np.int64),
                "query_type": np.asarray(kinds, dtype=str)}
        return items, meta


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
