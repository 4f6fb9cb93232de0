"""Tiny synthetic datasets written in the exact on-disk layouts of MARS, DukeMTMC-VideoReID,
VeRi-776 and ATRW (and iLIDS-VID and PRID2011, see :mod:`.twocam`), for tests, the demo, the
study and the benchmarks.

The same arguments always produce byte-identical files. A dataset folder is only rewritten
if this module wrote it (it holds a ``.vkd_synthetic`` marker); real data is never touched.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
from typing import Dict, Iterator, List, Tuple

import numpy as np
from PIL import Image

from vkd_torchreid.data.io import write_jpeg
from vkd_torchreid.synthetic.render import render
from vkd_torchreid.synthetic.twocam import person_numbers, write_ilidsvid, write_png, write_prid2011

logger = logging.getLogger(__name__)

MARKER = ".vkd_synthetic"
DATASET_DIRS = {"vkd_mars": "mars", "vkd_duke": "DukeMTMC-VideoReID", "vkd_veri": "VeRi",
                "vkd_atrw": "atrw", "vkd_ilidsvid": "ilids-vid", "vkd_prid2011": "prid2011"}
# Kept as first written: the files stay byte-identical across versions.
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by vkd_torchreid.data.synthetic"


# --------------------------------------------------------------------------- helpers

def _prepare(base: str) -> None:
    """Creates ``base`` (removing a previous synthetic write; refusing other content)."""
    if os.path.isdir(base) and os.listdir(base):
        if not os.path.isfile(os.path.join(base, MARKER)):
            raise FileExistsError(f"{base} exists and was not written by write_synthetic; "
                                  "remove it or choose another root")
        shutil.rmtree(base)
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, MARKER), "w", encoding="utf-8") as fh:
        fh.write("written by vkd_torchreid.data.synthetic.write_synthetic\n")


def _write_lines(path: str, lines: List[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("".join(f"{line}\n" for line in lines))


def _write_mat(path: str, key: str, array: np.ndarray) -> None:
    """savemat with a fixed header text (scipy's holds the time), so bytes are reproducible."""
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, {key: array})
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    with open(path, "wb") as fh:
        fh.write(bytes(data))


def _tracklets(pids: List[int], cams: int, tracklets: int) -> Iterator[Tuple[int, int, int]]:
    """(pid, 1-based camera, 1-based tracklet number within the identity)."""
    for pid in pids:
        t = 0
        for cam in range(1, cams + 1):
            for _ in range(tracklets):
                t += 1
                yield pid, cam, t


def mask_file(masks: str, image: str) -> str:
    """Where the foreground mask of ``image`` (a path relative to the data root, as in
    ``mars/bbox_test/0001/0001C1T0001F001.jpg``) lies under the masks folder ``masks``: the
    same relative path with ``.png`` (8-bit grey, 255 on the person, 0 elsewhere)."""
    return os.path.join(masks, os.path.splitext(image)[0] + ".png")


class _FrameWriter:
    """Writes the frames, and with a masks folder the person mask of each (see
    :func:`mask_file`)."""

    def __init__(self, root: str, masks: str) -> None:
        self.root = root
        self.masks = masks

    def write(self, path: str, img: np.ndarray, mask: np.ndarray) -> None:
        (write_png if path.endswith(".png") else write_jpeg)(path, img)
        if self.masks:
            target = mask_file(self.masks, os.path.relpath(path, self.root))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(target)  # 2-D uint8: grey


# --------------------------------------------------------------------------- writers

def _mars(base: str, train_ids: List[int], test_ids: List[int], cams: int, tracklets: int,
          frames: int, seed: int, h: int, w: int, out: _FrameWriter) -> Dict[str, int]:
    info = os.path.join(base, "info")
    os.makedirs(info, exist_ok=True)
    extra = [(0, 1, 1), (-1, 1, 1)] if len(train_ids) + len(test_ids) >= 4 else []
    counts = {"images": 0, "query": 0, "gallery": 0}
    for split, items in (("train", list(_tracklets(train_ids, cams, tracklets))),
                         ("test", list(_tracklets(test_ids, cams, tracklets)) + extra)):
        names: List[str] = []
        rows, query = [], []
        for pid, cam, t in items:
            prefix = "00-1" if pid == -1 else f"{pid:04d}"
            imgs, masks = render(seed, pid, cam, cam % 2 == 0, t, frames, h, w, with_masks=True)
            start = len(names) + 1
            for f, (img, mask) in enumerate(zip(imgs, masks), start=1):
                name = f"{prefix}C{cam}T{t:04d}F{f:03d}.jpg"
                out.write(os.path.join(base, f"bbox_{split}", prefix, name), img, mask)
                names.append(name)
            rows.append([start, len(names), pid, cam])
            if split == "test" and pid > 0 and cam == 1 and t == 1:
                query.append(len(rows))
        counts["images"] += len(names)
        _write_lines(os.path.join(info, f"{split}_name.txt"), names)
        _write_mat(os.path.join(info, f"tracks_{split}_info.mat"), f"track_{split}_info",
                   np.asarray(rows, dtype=np.float64))
        if split == "test":
            _write_mat(os.path.join(info, "query_IDX.mat"), "query_IDX",
                       np.asarray(query, dtype=np.float64)[None, :])
            counts["query"] = len(query)
            counts["gallery"] = sum(1 for r in rows if r[2] != -1) - len(query)
        else:
            counts["train_tracklets"] = len(rows)
    return counts


def _duke(base: str, train_ids: List[int], test_ids: List[int], cams: int, tracklets: int,
          frames: int, seed: int, h: int, w: int, out: _FrameWriter) -> Dict[str, int]:
    counts = {"images": 0, "train_tracklets": 0, "query": 0, "gallery": 0}
    for ids, is_test in ((train_ids, False), (test_ids, True)):
        for pid, cam, t in _tracklets(ids, cams, tracklets):
            split = ("query" if t == 1 else "gallery") if is_test else "train"
            folder = os.path.join(base, split, f"{pid:04d}", f"{t:04d}")
            imgs, masks = render(seed, pid, cam, cam % 2 == 0, t, frames, h, w, with_masks=True)
            for f, (img, mask) in enumerate(zip(imgs, masks), 1):
                out.write(os.path.join(folder, f"{pid:04d}_C{cam}_F{f:04d}_X{t}.jpg"), img, mask)
            counts["images"] += frames
            counts["train_tracklets" if split == "train" else split] += 1
    for split in ("train", "query", "gallery"):
        os.makedirs(os.path.join(base, split), exist_ok=True)
    return counts


def _veri(base: str, train_ids: List[int], test_ids: List[int], cams: int, tracklets: int,
          frames: int, seed: int, h: int, w: int, out: _FrameWriter) -> Dict[str, int]:
    lists: Dict[str, List[str]] = {"train": [], "query": [], "test": []}
    tracks: List[str] = []

    def name(vid: int, cam: int, t: int, f: int) -> str:
        return f"{vid:04d}_c{cam:03d}_{1000000 * cam + 1000 * t + f:08d}_{t % 2}.jpg"

    for ids, split in ((train_ids, "train"), (test_ids, "test")):
        for vid, cam, t in _tracklets(ids, cams, tracklets):
            imgs, masks = render(seed, vid, cam, cam % 2 == 0, t, frames + (split == "test"), h,
                                 w, with_masks=True)
            names = [name(vid, cam, t, f) for f in range(frames)]
            for n, img, mask in zip(names, imgs, masks):
                out.write(os.path.join(base, f"image_{split}", n), img, mask)
            lists[split].extend(names)
            if split == "test":
                tracks.append(" ".join([names[0], *names]))
                if t == (cam - 1) * tracklets + 1:  # one query image per vehicle and camera
                    q = name(vid, cam, t, 999)
                    out.write(os.path.join(base, "image_query", q), imgs[-1], masks[-1])
                    lists["query"].append(q)
    for split, names in lists.items():
        _write_lines(os.path.join(base, f"name_{split}.txt"), names)
    _write_lines(os.path.join(base, "test_track.txt"), tracks)
    return {"images": sum(len(v) for v in lists.values()), "train_tracklets":
            len(train_ids) * cams, "query": len(lists["query"]), "gallery": len(tracks)}


def atrw_keypoints(view: int, h: int, w: int) -> List[float]:
    """45 numbers whose visible side gives flank ``view`` (0 right, 1 left, 2 unknown)."""
    from vkd_torchreid.data.atrw import LEFT_SIDE, RIGHT_SIDE

    out: List[float] = []
    for k in range(15):
        hidden = (view == 0 and k in LEFT_SIDE) or (view == 1 and k in RIGHT_SIDE)
        out += [float((k * 7) % w), float((k * 11) % h), 0.0 if hidden else 2.0]
    return out


def _atrw(base: str, train_ids: List[int], test_ids: List[int], cams: int, tracklets: int,
          frames: int, seed: int, h: int, w: int, out: _FrameWriter) -> Dict[str, int]:
    train_rows: List[str] = []
    train_kp: Dict[str, List[float]] = {}
    for pid, cam, t in _tracklets(train_ids, cams, tracklets):
        view = (cam - 1) % 3
        for img, mask in zip(*render(seed, pid, cam, view == 1, t, frames, h, w,
                                     with_masks=True)):
            fname = f"{len(train_rows):06d}.jpg"
            out.write(os.path.join(base, "atrw_reid_train", "train", fname), img, mask)
            train_rows.append(f"{pid},{fname}")
            train_kp[fname] = atrw_keypoints(view, h, w)

    gt: List[Dict[str, object]] = []
    test_kp: Dict[str, List[float]] = {}
    clips = [(pid, cam, t, i % 2 == 1) for i, pid in enumerate(test_ids)
             for _, cam, t in _tracklets([pid], cams, tracklets)]
    if len(train_ids) + len(test_ids) >= 4:
        clips.append((-1, 1, 1, True))
    for clip, (pid, cam, t, single) in enumerate(clips, start=1):
        view = (cam - 1) % 3
        video = 1 if single else cam  # a single-camera tiger: every clip from camera 1
        group = [video, clip]
        for f, (img, mask) in enumerate(zip(*render(seed, pid, video, view == 1, t, frames, h,
                                                    w, with_masks=True))):
            imgid = len(gt)
            out.write(os.path.join(base, "atrw_reid_test", "test", f"{imgid:06d}.jpg"), img,
                      mask)
            test_kp[f"{imgid:06d}.jpg"] = atrw_keypoints(view, h, w)
            gt.append({"imgid": imgid, "entityid": pid, "query": "sing" if single else "multi",
                       "frame": [*group, 2 * f]})
    anno_tr = os.path.join(base, "atrw_anno_reid_train")
    anno_te = os.path.join(base, "atrw_anno_reid_test")
    _write_lines(os.path.join(anno_tr, "reid_list_train.csv"), train_rows)
    _write_lines(os.path.join(anno_te, "reid_list_test.csv"), sorted(test_kp))
    for path, obj in ((os.path.join(anno_tr, "reid_keypoints_train.json"), train_kp),
                      (os.path.join(anno_te, "reid_keypoints_test.json"), test_kp),
                      (os.path.join(base, "gt_test_plain.json"), gt)):
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            json.dump(obj, fh, sort_keys=True)
    return {"images": len(train_rows) + len(gt),
            "train_tracklets": len(train_ids) * min(cams, 3),
            "query": len(gt), "gallery": len(gt)}


def _ilidsvid(base: str, train_ids: List[int], test_ids: List[int], cams: int, tracklets: int,
              frames: int, seed: int, h: int, w: int, out: _FrameWriter) -> Dict[str, int]:
    people = person_numbers(train_ids[0], len(train_ids) + len(test_ids))
    return write_ilidsvid(base, people, frames, seed, h, w, out.write, _write_mat)


def _prid2011(base: str, train_ids: List[int], test_ids: List[int], cams: int, tracklets: int,
              frames: int, seed: int, h: int, w: int, out: _FrameWriter) -> Dict[str, int]:
    people = list(range(train_ids[0], test_ids[-1] + 1))
    return write_prid2011(base, people, len(train_ids), frames, seed, h, w, out.write)


_WRITERS = {"mars": _mars, "DukeMTMC-VideoReID": _duke, "VeRi": _veri, "atrw": _atrw,
            "ilids-vid": _ilidsvid, "prid2011": _prid2011}


def write_synthetic(dataset: str, root: str, ids: int = 8, cams: int = 3, tracklets: int = 2,
                    frames: int = 8, seed: int = 0, height: int = 128,
                    width: int = 64, first_pid: int = 1, train_ids: int = 0,
                    masks: str = "") -> Dict[str, int]:
    """Writes a tiny dataset under ``root/<dataset_dir>`` in the real on-disk layout.

    Args:
        dataset: ``vkd_mars``, ``vkd_duke``, ``vkd_veri``, ``vkd_atrw`` (or the folder names
            ``mars``, ``DukeMTMC-VideoReID``, ``VeRi``, ``atrw``).
        root: the parent folder (torchreid's ``data.root``).
        ids: identities; ``max(1, ids // 2)`` train, the rest test (MARS and ATRW add one
            distractor/junk identity to the test set when ``ids >= 4``).
        cams: cameras (ATRW: views, cycling right flank, left flank, unknown).
        tracklets: tracklets per identity and camera.
        frames: frames per tracklet.
        seed: appearance seed; the same arguments give byte-identical files.
        height, width: frame size.
        first_pid: the first identity number; worlds with disjoint identities but the same
            cameras (the demo's validation world) use the same ``seed`` and another range.
        train_ids: identities of the training split (0: half of ``ids``); the rest are test
            identities (a study needs many test queries more than many training identities).
        masks: a folder for the person mask of every frame, outside the dataset layout (for
            ``vkd-reid explain --masks``): ``<masks>/<dataset folder>/...png``, see
            :func:`mask_file`. Empty: no masks.

    Returns:
        counts: ``train_ids``, ``test_ids``, ``cams``, ``images``, ``train_tracklets``,
        ``query``, ``gallery`` (as the loader will parse them).

    Raises:
        ValueError: unknown dataset or sizes too small for a test split.
        FileExistsError: the dataset folder holds data this function did not write.
    """
    folder = DATASET_DIRS.get(dataset, dataset)
    if folder not in _WRITERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of "
                         f"{sorted(DATASET_DIRS) + sorted(_WRITERS)}")
    if first_pid < 1 or first_pid + ids > 9999:
        raise ValueError(f"first_pid={first_pid}: identities must stay within 1..9999")
    if ids < 2 or cams < 2 or tracklets < 1 or frames < 1 or height < 8 or width < 8:
        raise ValueError("write_synthetic needs ids >= 2, cams >= 2, tracklets >= 1, "
                         "frames >= 1 and frames of at least 8 x 8 pixels")
    n_train = train_ids or max(1, ids // 2)
    if not 0 < n_train < ids:
        raise ValueError(f"train_ids={train_ids}: expected 1..{ids - 1} (ids={ids})")
    train_ids = list(range(first_pid, first_pid + n_train))
    test_ids = list(range(first_pid + n_train, first_pid + ids))
    base = os.path.join(root, folder)
    _prepare(base)
    if masks:
        _prepare(os.path.join(masks, folder))
    counts = _WRITERS[folder](base, train_ids, test_ids, cams, tracklets, frames, seed,
                              height, width, _FrameWriter(root, masks))
    for key, value in (("train_ids", len(train_ids)), ("test_ids", len(test_ids)),
                       ("cams", cams)):
        counts.setdefault(key, value)  # iLIDS-VID and PRID2011 count their own
    logger.info("wrote synthetic %s to %s: %s", folder, base, counts)
    return counts
