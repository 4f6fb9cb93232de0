"""What iLIDS-VID and PRID2011 share: two cameras, one tracklet per person and camera, and ten
train/test splits of the people given by a split file.

The per-person tracklets come from torchreid's own parsing: its ``iLIDSVID.process_data`` and
``PRID2011.process_dir`` are called as they are, on a small stand-in object that holds only the
two camera folders they read (their classes' ``__init__`` would also download, write
``splits.json`` into the dataset folder and build the other splits). Around that call we add
what torchreid leaves out: a one-line error for a missing or empty person folder (torchreid
asserts without a message), frames in name order (torchreid keeps ``glob``'s directory order,
which is not the temporal order), and identities that are the person numbers of the folder
names in query and gallery (torchreid numbers them by position in the split's list), as the
other datasets keep theirs.
"""
from __future__ import annotations

import os
import re
import types
from typing import Callable, Dict, List, Sequence, Tuple

from vkd_torchreid.data.base import Protocol, Splits, Tracklet, first_frames, relabel

#: A torchreid per-person parser: ``(self, dirnames, cam1=..., cam2=...) -> tracklets``.
Parser = Callable[..., List[tuple]]
#: Config key that chooses the split (named in errors).
SPLIT_KEY = "data.split_id"
NUM_SPLITS = 10
PERSON_NUMBER = re.compile(r"(\d+)$")


def person_dirs(cam_dir: str) -> List[str]:
    """Names of the person folders in a camera folder, sorted (dot entries skipped).

    Raises:
        ValueError: a file where a person folder is expected.
    """
    names = []
    with os.scandir(cam_dir) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                raise ValueError(f"unexpected file {entry.path}; expected only person folders "
                                 "here")
            names.append(entry.name)
    return sorted(names)


def person_number(dirname: str, cam_dir: str) -> int:
    """The number at the end of a person folder's name (``person001`` -> 1)."""
    match = PERSON_NUMBER.search(dirname)
    if match is None:
        raise ValueError(f"person folder {os.path.join(cam_dir, dirname)} has no number at the "
                         "end of its name")
    return int(match.group(1))


def check_split_id(split_id: int, num_splits: int, path: str) -> int:
    """``split_id`` if it is one of the ``num_splits`` splits of the split file ``path``."""
    if isinstance(split_id, bool) or not isinstance(split_id, int) or not (
            0 <= split_id < num_splits):
        raise ValueError(f"{SPLIT_KEY}={split_id!r} is out of range: {path} holds "
                         f"{num_splits} splits (0-{num_splits - 1})")
    return split_id


def check_people(cams: Sequence[str], dirnames: Sequence[str], ext: str = ".png") -> None:
    """Every person of ``dirnames`` has a folder with at least one ``ext`` frame in each camera.

    Raises:
        FileNotFoundError: a person folder is missing.
        ValueError: a person folder holds no frames.
    """
    for cam_dir in cams:
        for name in dirnames:
            folder = os.path.join(cam_dir, name)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"missing person folder {folder} (named by the split "
                                        "file)")
            with os.scandir(folder) as it:
                if not any(e.name.endswith(ext) and e.is_file() for e in it):
                    raise ValueError(f"tracklet folder {folder} holds no {ext} frames")


def torchreid_tracklets(parser: Parser, cams: Dict[str, str], dirnames: Sequence[str],
                        cam1: bool, cam2: bool, pids: Dict[str, int]) -> List[Tracklet]:
    """Tracklets of ``dirnames`` by torchreid's parser, frames sorted, identities ``pids``.

    Args:
        parser: ``iLIDSVID.process_data`` or ``PRID2011.process_dir`` (unbound).
        cams: the attributes the parser reads for its two camera folders.
        dirnames: person folder names, in the order of the split file.
        cam1, cam2: which cameras' tracklets (torchreid's arguments).
        pids: identity of each folder name (torchreid's is its position in ``dirnames``).

    Returns:
        ``(frames, pid, camid)`` with camid 0 (first camera) or 1 (second), in torchreid's order.
    """
    holder = types.SimpleNamespace(**cams)
    out: List[Tracklet] = []
    for paths, index, cam in parser(holder, list(dirnames), cam1=cam1, cam2=cam2):
        out.append((tuple(sorted(paths)), pids[dirnames[index]], int(cam)))
    return out


def two_camera_splits(parser: Parser, cams: Dict[str, str], cam_dirs: Tuple[str, str],
                      train_dirs: Sequence[str], test_dirs: Sequence[str]) -> Splits:
    """Train (both cameras), query (first camera) and gallery (second) of one split, as torchreid
    forms them; I2V queries are the query tracklets' first frames.

    Raises:
        ValueError: a person in both train and test, or twice in one list.
    """
    for name, dirs in (("train", train_dirs), ("test", test_dirs)):
        if len(set(dirs)) != len(dirs):
            dup = next(d for d in dirs if list(dirs).count(d) > 1)
            raise ValueError(f"the split's {name} list names person {dup} twice")
    both = sorted(set(train_dirs) & set(test_dirs))
    if both:
        raise ValueError(f"the split names person {both[0]} in both train and test")
    check_people(cam_dirs, [*train_dirs, *test_dirs])
    pids = {d: person_number(d, cam_dirs[0]) for d in [*train_dirs, *test_dirs]}
    if len(set(pids.values())) != len(pids):
        seen: Dict[int, str] = {}
        for d, p in pids.items():
            if p in seen:
                raise ValueError(f"person folders {seen[p]} and {d} in {cam_dirs[0]} have the "
                                 f"same number {p}")
            seen[p] = d
    train = torchreid_tracklets(parser, cams, train_dirs, True, True, pids)
    query = torchreid_tracklets(parser, cams, test_dirs, True, False, pids)
    gallery = torchreid_tracklets(parser, cams, test_dirs, False, True, pids)
    return Splits(train=relabel(train), query=query, gallery=gallery,
                  query_img=first_frames(query), gallery_img=[],
                  protocol=Protocol(("I2V", "V2V")))
