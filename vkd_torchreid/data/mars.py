"""MARS (Zheng et al., ECCV 2016): video person re-ID, 6 cameras, 1.1M frames.

The tracklets are defined by MATLAB tables over two name lists. Query tracklets are the
test rows listed in ``query_IDX``; the gallery holds the other test rows (the engine puts the
queries back into the gallery when ``Protocol.query_in_gallery``, as the reference does).
pid -1 (junk) never reaches query or gallery; pid 0 (distractors) stays in the gallery.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Sequence

import numpy as np

from vkd_torchreid.data.base import (
    LayoutError,
    Protocol,
    Splits,
    Tracklet,
    VKDVideoDataset,
    first_frames,
    read_lines,
    relabel,
    require_dir,
    require_file,
)
from vkd_torchreid.data.io import load_mat
from vkd_torchreid.data.registry import register_dataset

logger = logging.getLogger(__name__)

JUNK_PID = -1


def _as_int(values: np.ndarray, path: str, what: str) -> np.ndarray:
    """Integer copy of ``values``; ValueError naming ``path`` if they are not integers."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind != "f":
        raise ValueError(f"{path}: {what} must hold numbers, got dtype {values.dtype}")
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise ValueError(f"{path}: {what} must hold whole numbers")
    return values.astype(np.int64)


def _track_table(path: str, key: str) -> np.ndarray:
    table = load_mat(path, key)
    if table.ndim != 2 or table.shape[1] != 4:
        raise ValueError(f"{path}: {key} must be a 2-D table with 4 columns "
                         f"[start, end, pid, camid], got shape {table.shape}")
    return _as_int(table, path, key)


@register_dataset("vkd_mars")
class Mars(VKDVideoDataset):
    """MARS under ``root/mars`` (option ``mars_query_in_gallery``, default True)."""

    dataset_dir = "mars"
    OPTIONS = ("mars_query_in_gallery",)
    FRAME_FORMAT = "jpeg"
    LAYOUT = """\
mars/
  bbox_train/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg
  bbox_test/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg   (pid 0000 distractors, 00-1 junk)
  info/train_name.txt           one image name a line
  info/test_name.txt            one image name a line
  info/tracks_train_info.mat    key track_train_info: rows [start, end, pid, camid],
  info/tracks_test_info.mat     key track_test_info   1-based inclusive name indices, cams 1..6
  info/query_IDX.mat            key query_IDX: 1-based rows of the test table"""

    @classmethod
    def parse(cls, dataset_dir: str, mars_query_in_gallery: bool = True,
              **unused: Any) -> Splits:
        """Reads MARS at ``dataset_dir`` (``root/mars``)."""
        info = require_dir(os.path.join(dataset_dir, "info"), cls.LAYOUT)
        files = {name: require_file(os.path.join(info, name), cls.LAYOUT) for name in (
            "train_name.txt", "test_name.txt", "tracks_train_info.mat",
            "tracks_test_info.mat", "query_IDX.mat")}
        train_dir = require_dir(os.path.join(dataset_dir, "bbox_train"), cls.LAYOUT)
        test_dir = require_dir(os.path.join(dataset_dir, "bbox_test"), cls.LAYOUT)

        train = cls._tracklets(read_lines(files["train_name.txt"]),
                               _track_table(files["tracks_train_info.mat"], "track_train_info"),
                               train_dir, files["tracks_train_info.mat"])
        test = cls._tracklets(read_lines(files["test_name.txt"]),
                              _track_table(files["tracks_test_info.mat"], "track_test_info"),
                              test_dir, files["tracks_test_info.mat"])
        for split, items in (("train", train), ("test", test)):
            if items and not os.path.isfile(items[0][0][0]):
                raise LayoutError(f"missing image {items[0][0][0]} (first frame of the first "
                                  f"{split} tracklet)", cls.LAYOUT)

        qpath = files["query_IDX.mat"]
        query_idx = _as_int(load_mat(qpath, "query_IDX").reshape(-1), qpath, "query_IDX")
        bad = np.nonzero((query_idx < 1) | (query_idx > len(test)))[0]
        if bad.size:
            raise ValueError(f"{qpath}: query_IDX entry {bad[0] + 1} is {query_idx[bad[0]]}, "
                             f"outside the {len(test)} rows of the test table")
        is_query = np.zeros(len(test), dtype=bool)
        is_query[query_idx - 1] = True
        query = [test[i - 1] for i in query_idx if test[i - 1][1] != JUNK_PID]
        gallery = [t for t, q in zip(test, is_query) if not q and t[1] != JUNK_PID]
        train = relabel([t for t in train if t[1] != JUNK_PID])
        protocol = Protocol(("I2V", "V2V"), query_in_gallery=bool(mars_query_in_gallery))
        return Splits(train=train, query=query, gallery=gallery, query_img=first_frames(query),
                      gallery_img=[], protocol=protocol)

    @staticmethod
    def _tracklets(names: Sequence[str], table: np.ndarray, image_dir: str,
                   path: str) -> List[Tracklet]:
        """Tracklets of a track table over a name list (ValueError naming ``path`` and row)."""
        out: List[Tracklet] = []
        for row, (start, end, pid, cam) in enumerate(table.tolist(), start=1):
            if not 1 <= start <= end <= len(names):
                raise ValueError(f"{path}: row {row} spans names {start}..{end}, outside the "
                                 f"{len(names)} names of its list (1-based, inclusive)")
            if cam < 1:
                raise ValueError(f"{path}: row {row} has camera {cam}; cameras are 1-based")
            paths = tuple(os.path.join(image_dir, n[:4], n) for n in names[start - 1:end])
            out.append((paths, int(pid), int(cam) - 1))
        return out
