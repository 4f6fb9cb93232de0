"""DukeMTMC-VideoReID (Wu et al., CVPR 2018): one folder per tracklet, 8 cameras.

Option ``duke_tracklets``:

- ``folder`` (default, the standard protocol): one tracklet per ``<pid4>/<tracklet4>/`` folder;
- ``reference`` (the VKD reference code): all frames of a split in sorted path order, runs of
  consecutive frames of one identity and camera form one tracklet, so consecutive tracklet
  folders of one identity and camera merge (in train, query and gallery alike).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, List, Tuple

from vkd_torchreid.data.base import (
    Protocol,
    Splits,
    Tracklet,
    VKDVideoDataset,
    first_frames,
    relabel,
    require_dir,
)
from vkd_torchreid.data.registry import register_dataset

logger = logging.getLogger(__name__)

#: ``<pid4>_C<cam>_F<frame4>_X<n>.jpg``
FRAME_NAME = re.compile(r"^(\d{4})_C(\d+)_F(\d+)_X(\d+)\.jpg$")
#: Values of the ``duke_tracklets`` option.
TRACKLET_MODES = ("folder", "reference")

#: One tracklet folder: (folder path, identity from the folder name, sorted frame names).
Folder = Tuple[str, int, List[str]]


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


def _camera(folder: str, name: str) -> int:
    """0-based camera of a checked frame name; ValueError naming the file if it is 0."""
    cam = int(FRAME_NAME.match(name).group(2))
    if cam < 1:
        raise ValueError(f"{os.path.join(folder, name)}: cameras are 1-based")
    return cam - 1


@register_dataset("vkd_duke")
class DukeVideo(VKDVideoDataset):
    """DukeMTMC-VideoReID under ``root/DukeMTMC-VideoReID`` (option ``duke_tracklets``)."""

    dataset_dir = "DukeMTMC-VideoReID"
    OPTIONS = ("duke_tracklets",)
    FRAME_FORMAT = "jpeg"
    LAYOUT = """\
DukeMTMC-VideoReID/
  train/<pid4>/<tracklet4>/<pid4>_C<cam>_F<frame4>_X<n>.jpg
  query/<pid4>/<tracklet4>/<pid4>_C<cam>_F<frame4>_X<n>.jpg
  gallery/<pid4>/<tracklet4>/<pid4>_C<cam>_F<frame4>_X<n>.jpg"""

    @classmethod
    def parse(cls, dataset_dir: str, duke_tracklets: str = "folder", **unused: Any) -> Splits:
        """Reads DukeMTMC-VideoReID at ``dataset_dir``."""
        if duke_tracklets not in TRACKLET_MODES:
            raise ValueError(f"duke_tracklets={duke_tracklets!r}: expected one of "
                             f"{', '.join(repr(m) for m in TRACKLET_MODES)}")
        splits = {}
        for name in ("train", "query", "gallery"):
            folders = cls._read_folders(require_dir(os.path.join(dataset_dir, name), cls.LAYOUT))
            if duke_tracklets == "reference":
                splits[name] = cls._merge_consecutive(folders)
                logger.info("%s: duke_tracklets='reference': %d tracklet folders merged into "
                            "%d tracklets", os.path.join(dataset_dir, name), len(folders),
                            len(splits[name]))
            else:
                splits[name] = [(tuple(os.path.join(path, n) for n in names), pid,
                                 _camera(path, names[0])) for path, pid, names in folders]
        query = splits["query"]
        return Splits(train=relabel(splits["train"]), query=query, gallery=splits["gallery"],
                      query_img=first_frames(query), gallery_img=[],
                      protocol=Protocol(("I2V", "V2V")))

    @staticmethod
    def _read_folders(split_dir: str) -> List[Folder]:
        """Non-empty tracklet folders of a split in sorted path order, frame names checked."""
        folders: List[Folder] = []
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
                folders.append((trk.path, pid, names))
        return folders

    @staticmethod
    def _merge_consecutive(folders: List[Folder]) -> List[Tracklet]:
        """The reference's tracklets: runs of consecutive frames (in sorted path order) whose
        names share identity and camera (``<pid4>_C<cam>``, the reference's ``name[:7]``).

        The folders come in sorted path order (folders, then frames, sorted by name at each
        level: the order of the reference's ``sorted(Path(split).glob('**/*.jpg'))``). The
        identity is the one in the frame name, as in the reference.
        """
        tracklets: List[Tracklet] = []
        paths: List[str] = []
        current = None
        for path, _, names in folders:
            for name in names:
                match = FRAME_NAME.match(name)
                key = (int(match.group(1)), int(match.group(2)))
                if key != current:
                    if paths:
                        tracklets.append((tuple(paths), current[0], current[1] - 1))
                    _camera(path, name)
                    current, paths = key, []
                paths.append(os.path.join(path, name))
        if paths:
            tracklets.append((tuple(paths), current[0], current[1] - 1))
        return tracklets
