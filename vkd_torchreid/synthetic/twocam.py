"""Synthetic iLIDS-VID and PRID2011 worlds in torchreid's layouts, with split files its own
readers accept: the official ``.mat`` for iLIDS-VID (``scipy.io.savemat``) and the json for
PRID2011.

Both datasets have two cameras and one tracklet per person and camera, so a writer's ``cams``
and ``tracklets`` arguments do not apply. The split files hold ten splits, each a seeded
shuffle of the people: iLIDS-VID's rule makes the first half of a row the test people
(``ids // 2``); PRID2011's json lists ``train_ids`` training people and the rest as test.
Person numbers have gaps (as the real iLIDS-VID's), so the ``.mat``'s positions and the folder
names differ. PRID2011 also gets people seen by one camera only (fewer in ``cam_a`` than in
``cam_b``, as the real data) and one person of both cameras left out of the json: the split
file, not the folders, decides who counts.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List

import cv2
import numpy as np

from vkd_torchreid.synthetic.render import render

NUM_SPLITS = 10
#: Render identities of PRID2011's one-camera people from here (never a shared person's look).
_SOLO_PID = 5000

#: ``write(path, rgb [H, W, 3], mask [H, W])`` of the caller (frames and optional masks).
Write = Callable[[str, np.ndarray, np.ndarray], None]
#: ``write_mat(path, key, array)``: the caller's ``scipy.io.savemat`` (reproducible bytes).
WriteMat = Callable[[str, str, np.ndarray], None]


def write_png(path: str, rgb: np.ndarray) -> None:
    """Writes an RGB ``uint8`` array ``[H, W, 3]`` as a PNG file, creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode PNG for {path}")
    buf.tofile(path)


def person_numbers(first_pid: int, n: int) -> List[int]:
    """``n`` person numbers from ``first_pid`` with a gap after every fifth."""
    return [first_pid + i + i // 5 for i in range(n)]


def shuffles(seed: int, n: int) -> np.ndarray:
    """Ten seeded permutations of ``0..n-1``, ``[10, n]``."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 22])
    return np.stack([rng.permutation(n) for _ in range(NUM_SPLITS)])


def _tracklet(write: Write, folder: str, name: Callable[[int], str], seed: int, pid: int,
              cam: int, frames: int, h: int, w: int) -> None:
    imgs, masks = render(seed, pid, cam, cam == 2, 1, frames, h, w, with_masks=True)
    for f, (img, mask) in enumerate(zip(imgs, masks)):
        write(os.path.join(folder, name(f)), img, mask)


def write_ilidsvid(base: str, people: List[int], frames: int, seed: int, h: int, w: int,
                   write: Write, write_mat: WriteMat) -> Dict[str, int]:
    """iLIDS-VID under ``base`` (``root/ilids-vid``); returns the counts of split 0."""
    seq = os.path.join(base, "i-LIDS-VID", "sequences")
    for pid in people:
        for cam in (1, 2):
            folder = os.path.join(seq, f"cam{cam}", f"person{pid:03d}")
            _tracklet(write, folder, lambda f, c=cam, p=pid: f"cam{c}_person{p:03d}_{f:05d}.png",
                      seed, pid, cam, frames, h, w)
    ls_set = shuffles(seed, len(people)) + 1  # 1-based positions of the sorted person folders
    split_dir = os.path.join(base, "train-test people splits")
    os.makedirs(split_dir, exist_ok=True)
    write_mat(os.path.join(split_dir, "train_test_splits_ilidsvid.mat"), "ls_set",
              ls_set.astype(np.float64))
    test = len(people) // 2
    return {"images": 2 * frames * len(people), "train_tracklets": 2 * (len(people) - test),
            "query": test, "gallery": test, "train_ids": len(people) - test, "test_ids": test,
            "cams": 2}


def write_prid2011(base: str, people: List[int], n_train: int, frames: int, seed: int, h: int,
                   w: int, write: Write) -> Dict[str, int]:
    """PRID2011 under ``base`` (``root/prid2011``); returns the counts of split 0."""
    shots = os.path.join(base, "prid_2011", "multi_shot")
    solo_a = max(1, len(people) // 4)
    solo_b = 2 * solo_a
    last = people[-1]
    for cam, letter, solo in ((1, "a", solo_a), (2, "b", solo_b)):
        extra = [last + 1 + i for i in range(solo)]
        for pid in [*people, *extra]:
            look = pid if pid <= last else _SOLO_PID + 1000 * cam + pid
            folder = os.path.join(shots, f"cam_{letter}", f"person_{pid:04d}")
            _tracklet(write, folder, lambda f: f"{f + 1:04d}.png", seed, look, cam, frames, h, w)
    counted = people[:-1] if len(people) >= 4 else people  # one person left out of the json
    n_train = min(n_train, len(counted) - 1)
    splits = []
    for perm in shuffles(seed, len(counted)):
        names = [f"person_{counted[i]:04d}" for i in perm]
        splits.append({"train": names[:n_train], "test": names[n_train:]})
    with open(os.path.join(base, "splits_prid2011.json"), "w", encoding="utf-8",
              newline="\n") as fh:
        json.dump(splits, fh, indent=1)
    test = len(counted) - n_train
    return {"images": frames * (2 * len(people) + solo_a + solo_b),
            "train_tracklets": 2 * n_train, "query": test, "gallery": test,
            "train_ids": n_train, "test_ids": test, "cams": 2}
