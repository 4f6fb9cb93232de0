"""DukeMTMC-VideoReID (Wu et al., CVPR 2018): one folder per tracklet, 8 cameras."""
from __future__ import annotations

import logging
import os
import re
from typing import Any, List

from vkd_torchreid.data.base import (
    Protocol,
    Splits,
    Tracklet,
    VKDVideoDataset,
    first_frames,
    relabel,
    require_dir,
)

logger = logging.getLogger(__name__)

#: ``<pid4>_C<cam>_F<frame4>_X<n>.jpg``
FRAME_NAME = re.compile(r"^(\d{4})_C(\d+)_F(\d+)_X(\d+)\.jpg$")


def _subdirs(path: str) -> List[os.DirEntry]:
    """Sub-folders of ``path`` sorted by name (dot entries skipped, other files refused)."""
    out = []
    with os.scandir(path) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                raise ValueError(f"unexpected file {entry.path}; expected only folders here")
            out.append(entry)
    return sorted(out, key=lambda e: e.name)


class DukeVideo(VKDVideoDataset):
    """DukeMTMC-VideoReID under ``root/DukeMTMC-VideoReID``."""

    dataset_dir = "DukeMTMC-VideoReID"
    LAYOUT = """\
DukeMTMC-VideoReID/
  train/<pid4>/<tracklet4>/<pid4>_C<cam>_F<frame4>_X<n>.jpg
  query/<pid4>/<tracklet4>/<pid4>_C<cam>_F<frame4>_X<n>.jpg
  gallery/<pid4>/<tracklet4>/<pid4>_C<cam>_F<frame4>_X<n>.jpg"""

    @classmethod
    def parse(cls, dataset_dir: str, **unused: Any) -> Splits:
        """Reads DukeMTMC-VideoReID at ``dataset_dir``."""
        splits = {name: cls._read_split(require_dir(os.path.join(dataset_dir, name), cls.LAYOUT))
                  for name in ("train", "query", "gallery")}
        query = splits["query"]
        return Splits(train=relabel(splits["train"]), query=query, gallery=splits["gallery"],
                      query_img=first_frames(query), gallery_img=[],
                      protocol=Protocol(("I2V", "V2V")))

    @staticmethod
    def _read_split(split_dir: str) -> List[Tracklet]:
        tracklets: List[Tracklet] = []
        for pid_entry in _subdirs(split_dir):
            if not pid_entry.name.isdigit():
                raise ValueError(f"identity folder {pid_entry.path} is not a number "
                                 "(expected <pid4>/<tracklet4>/)")
            pid = int(pid_entry.name)
            for trk in _subdirs(pid_entry.path):
                with os.scandir(trk.path) as it:
                    names = sorted(e.name for e in it if not e.name.startswith("."))
                if not names:
                    logger.warning("skipping empty tracklet folder %s", trk.path)
                    continue
                for name in names:
                    if not FRAME_NAME.match(name):
                        raise ValueError(f"bad frame name {os.path.join(trk.path, name)}; "
                                         "expected <pid4>_C<cam>_F<frame4>_X<n>.jpg")
                cam = int(FRAME_NAME.match(names[0]).group(2))
                if cam < 1:
                    raise ValueError(f"{os.path.join(trk.path, names[0])}: cameras are 1-based")
                paths = tuple(os.path.join(trk.path, n) for n in names)
                tracklets.append((paths, pid, cam - 1))
        return tracklets
