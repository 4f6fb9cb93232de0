"""Tiny synthetic datasets written in the exact on-disk layouts of MARS, DukeMTMC-VideoReID,
VeRi-776 and ATRW, for tests, the demo and benchmarks.

Every identity has a deterministic look (palette, stripe period and phase, an off-centre
logo), every camera/view changes it consistently (viewpoint flip, shift, colour cast,
background) and frames add a little jitter and noise: a small CNN can learn re-ID on it.
The same arguments always produce byte-identical files. A dataset folder is only rewritten
if this module wrote it (it holds a ``.vkd_synthetic`` marker); real data is never touched.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from vkd_torchreid.data.io import write_jpeg

logger = logging.getLogger(__name__)

MARKER = ".vkd_synthetic"
DATASET_DIRS = {"vkd_mars": "mars", "vkd_duke": "DukeMTMC-VideoReID", "vkd_veri": "VeRi",
                "vkd_atrw": "atrw"}
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by vkd_torchreid.data.synthetic"


# --------------------------------------------------------------------------- rendering

def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, *(k + 1024 for k in keys)])


#: A small shared palette: many identities share each colour, so one view is ambiguous.
_PALETTE = np.array([[200, 40, 40], [40, 150, 60], [50, 70, 200], [225, 195, 60],
                     [35, 35, 40], [215, 215, 215]], dtype=np.float32)
_LEGS = np.array([[40, 40, 60], [110, 85, 60], [150, 150, 155]], dtype=np.float32)
VIEWS = ("front", "back", "side")


def _identity(seed: int, pid: int, view: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Colours ``[h, w, 3]`` and mask ``[h, w]`` of identity ``pid`` seen from ``view``.

    An identity is a front and a back torso colour and pattern (stripes; a chest logo; a
    backpack), trousers and a subtle personal tint. Front and back are drawn independently
    from a small palette, so a single view matches several identities and only several views
    pin one down.
    """
    rng = _rng(seed, 1, pid)
    front, back = _PALETTE[rng.integers(0, len(_PALETTE), 2)]
    legs = _LEGS[rng.integers(0, len(_LEGS))]
    stripe_front, stripe_back, logo, backpack = rng.integers(0, 2, 4).astype(bool)
    tint = rng.uniform(-14, 14, 3).astype(np.float32)
    half = max(1, int(rng.integers(2, 5)) * max(1, h // 64))
    y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    width = 0.2 if view == 2 else 0.3  # seen from the side, the body is narrower
    head = ((y - 0.12) * h) ** 2 + ((x - 0.5) * w) ** 2 < (0.09 * h) ** 2
    torso = (y >= 0.2) & (y < 0.58) & (np.abs(x - 0.5) < width)
    legs_m = (y >= 0.58) & (y < 0.97) & (np.abs(x - 0.5) < width * 0.75) & ~(
        (np.abs(x - 0.5) < 0.04) & (y > 0.7))
    stripes = ((np.arange(h) // half) % 2 == 0)[:, None]  # rows; broadcast over columns
    img = np.zeros((h, w, 3), np.float32)
    img[head] = (224, 180, 150)
    img[legs_m] = legs
    if view == 2:  # side: front half of the torso in front colours, back half in back ones
        front_half = torso & (x < 0.5)
        back_half = torso & (x >= 0.5)
        img[front_half] = front
        img[back_half] = back
        if stripe_front:
            img[front_half & stripes] = 0.55 * front
        if stripe_back:
            img[back_half & stripes] = 0.55 * back
        mask = head | torso | legs_m
        if backpack:  # seen from the side, it sticks out behind the back
            pack = (y >= 0.24) & (y < 0.5) & (x >= 0.5 + width) & (x < 0.5 + width + 0.12)
            img[pack] = (90, 60, 30)
            mask = mask | pack
    else:
        colour, striped = (front, stripe_front) if view == 0 else (back, stripe_back)
        img[torso] = colour
        if striped:
            img[torso & stripes] = 0.55 * colour
        if view == 0 and logo:
            img[torso & (np.abs(x - 0.38) < 0.08) & (y < 0.36)] = 255.0 - colour
        if view == 1 and backpack:
            img[(y >= 0.24) & (y < 0.5) & (np.abs(x - 0.5) < 0.18)] = (90, 60, 30)
        mask = head | torso | legs_m
    img[mask] += tint
    return img, mask


def _background(seed: int, cam: int, h: int, w: int) -> np.ndarray:
    """Camera ``cam``'s scene: a vertical gradient with a few fixed blocks of clutter."""
    crng = _rng(seed, 2, cam)
    top, bottom = crng.integers(40, 216, size=(2, 3)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    bg = np.repeat(top * (1 - ramp) + bottom * ramp, w, axis=1)
    for _ in range(3):
        y0, x0 = int(crng.integers(0, h - h // 4)), int(crng.integers(0, w - w // 4))
        bg[y0:y0 + h // 4, x0:x0 + w // 4] = crng.integers(20, 236, 3)
    return bg


def render(seed: int, pid: int, cam: int, flip: bool, key: int, n: int, h: int,
           w: int, view: Optional[int] = None) -> np.ndarray:
    """``n`` RGB frames ``[n, h, w, 3]`` of identity ``pid`` seen by camera ``cam``.

    What a camera sees depends on the viewpoint (``view``: 0 front, 1 back, 2 side; by
    default drawn per tracklet from ``key``, ``flip`` mirrors it), the camera's light (colour
    cast and brightness) and its background; frames jitter in position and brightness.
    """
    if view is None:
        view = int(_rng(seed, 4, pid, cam, key).integers(0, len(VIEWS)))
    fg, mask = _identity(seed, pid, view, h, w)
    if flip:
        fg, mask = fg[:, ::-1], mask[:, ::-1]
    crng = _rng(seed, 5, cam)
    cast = crng.uniform(0.75, 1.25, 3).astype(np.float32)
    img = np.where(mask[..., None], fg * cast + np.float32(crng.uniform(-25, 25)),
                   _background(seed, cam, h, w))
    shift = int(crng.integers(-(w // 10), w // 10 + 1))

    rng = _rng(seed, 3, pid, cam, key)
    dys = rng.integers(-2, 3, n)
    dxs = rng.integers(-2, 3, n) + shift
    rows = np.clip(np.arange(h)[None, :] - dys[:, None], 0, h - 1)
    cols = np.clip(np.arange(w)[None, :] - dxs[:, None], 0, w - 1)
    out = img[rows[:, :, None], cols[:, None, :]]
    out += rng.uniform(-8, 8, (n, 1, 1, 1)).astype(np.float32)
    out += 4 * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


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


# --------------------------------------------------------------------------- writers

def _mars(base: str, train_ids: List[int], test_ids: List[int], cams: int, tracklets: int,
          frames: int, seed: int, h: int, w: int) -> Dict[str, int]:
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
            imgs = render(seed, pid, cam, cam % 2 == 0, t, frames, h, w)
            start = len(names) + 1
            for f, img in enumerate(imgs, start=1):
                name = f"{prefix}C{cam}T{t:04d}F{f:03d}.jpg"
                write_jpeg(os.path.join(base, f"bbox_{split}", prefix, name), img)
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
          frames: int, seed: int, h: int, w: int) -> Dict[str, int]:
    counts = {"images": 0, "train_tracklets": 0, "query": 0, "gallery": 0}
    for ids, is_test in ((train_ids, False), (test_ids, True)):
        for pid, cam, t in _tracklets(ids, cams, tracklets):
            split = ("query" if t == 1 else "gallery") if is_test else "train"
            folder = os.path.join(base, split, f"{pid:04d}", f"{t:04d}")
            for f, img in enumerate(render(seed, pid, cam, cam % 2 == 0, t, frames, h, w), 1):
                write_jpeg(os.path.join(folder, f"{pid:04d}_C{cam}_F{f:04d}_X{t}.jpg"), img)
            counts["images"] += frames
            counts["train_tracklets" if split == "train" else split] += 1
    for split in ("train", "query", "gallery"):
        os.makedirs(os.path.join(base, split), exist_ok=True)
    return counts


def _veri(base: str, train_ids: List[int], test_ids: List[int], cams: int, tracklets: int,
          frames: int, seed: int, h: int, w: int) -> Dict[str, int]:
    lists: Dict[str, List[str]] = {"train": [], "query": [], "test": []}
    tracks: List[str] = []

    def name(vid: int, cam: int, t: int, f: int) -> str:
        return f"{vid:04d}_c{cam:03d}_{1000000 * cam + 1000 * t + f:08d}_{t % 2}.jpg"

    for ids, split in ((train_ids, "train"), (test_ids, "test")):
        for vid, cam, t in _tracklets(ids, cams, tracklets):
            imgs = render(seed, vid, cam, cam % 2 == 0, t, frames + (split == "test"), h, w)
            names = [name(vid, cam, t, f) for f in range(frames)]
            for n, img in zip(names, imgs):
                write_jpeg(os.path.join(base, f"image_{split}", n), img)
            lists[split].extend(names)
            if split == "test":
                tracks.append(" ".join([names[0], *names]))
                if t == (cam - 1) * tracklets + 1:  # one query image per vehicle and camera
                    q = name(vid, cam, t, 999)
                    write_jpeg(os.path.join(base, "image_query", q), imgs[-1])
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
          frames: int, seed: int, h: int, w: int) -> Dict[str, int]:
    train_rows: List[str] = []
    train_kp: Dict[str, List[float]] = {}
    for pid, cam, t in _tracklets(train_ids, cams, tracklets):
        view = (cam - 1) % 3
        for img in render(seed, pid, cam, view == 1, t, frames, h, w):
            fname = f"{len(train_rows):06d}.jpg"
            write_jpeg(os.path.join(base, "atrw_reid_train", "train", fname), img)
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
        for f, img in enumerate(render(seed, pid, video, view == 1, t, frames, h, w)):
            imgid = len(gt)
            write_jpeg(os.path.join(base, "atrw_reid_test", "test", f"{imgid:06d}.jpg"), img)
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


_WRITERS = {"mars": _mars, "DukeMTMC-VideoReID": _duke, "VeRi": _veri, "atrw": _atrw}


def write_synthetic(dataset: str, root: str, ids: int = 8, cams: int = 3, tracklets: int = 2,
                    frames: int = 8, seed: int = 0, height: int = 128,
                    width: int = 64, first_pid: int = 1, train_ids: int = 0) -> Dict[str, int]:
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
    counts = _WRITERS[folder](base, train_ids, test_ids, cams, tracklets, frames, seed,
                              height, width)
    counts.update(train_ids=len(train_ids), test_ids=len(test_ids), cams=cams)
    logger.info("wrote synthetic %s to %s: %s", folder, base, counts)
    return counts
