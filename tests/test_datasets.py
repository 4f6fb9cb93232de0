"""Dataset loaders on tiny datasets written in the real on-disk layouts, and their errors."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from vkd_torchreid import compat
from vkd_torchreid.data import ATRW, DATASETS, DukeVideo, Mars, VeRi, clear_cache
from vkd_torchreid.data.atrw import LEFT, RIGHT, UNKNOWN, flank
from vkd_torchreid.data.check import check_dataset, format_statistics
from vkd_torchreid.data.io import write_jpeg
from vkd_torchreid.synthetic import atrw_keypoints, write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK_TOOL = os.path.join(REPO, "tools", "check_dataset.py")
SMALL = {"ids": 8, "cams": 3, "tracklets": 2, "frames": 4, "seed": 0, "height": 32, "width": 16}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def _write(name, tmp_path, **kw):
    root = str(tmp_path)
    counts = write_synthetic(name, root, **{**SMALL, **kw})
    return root, counts


def _via_torchreid(name, root, **options):
    """Builds the dataset through torchreid's own registry (registered on import)."""
    assert name in compat.video_dataset_names()
    return compat.data.datasets.init_video_dataset(name, root=root, mode="train",
                                                   verbose=False, **options)


def _check_common(splits, counts, cams):
    train_ids = SMALL["ids"] // 2
    assert sorted({pid for _, pid, _ in splits.train}) == list(range(train_ids))
    assert counts["train_ids"] == train_ids and counts["test_ids"] == SMALL["ids"] - train_ids
    for name in ("train", "query", "gallery", "query_img", "gallery_img"):
        assert all(0 <= cam < cams for _, _, cam in getattr(splits, name))
    assert len(splits.train) == counts["train_tracklets"]


# ----------------------------------------------------------------------------- MARS

def test_mars_synthetic_counts_junk_and_distractors(tmp_path):
    root, counts = _write("vkd_mars", tmp_path)
    splits = Mars.load(root)
    _check_common(splits, counts, SMALL["cams"])
    test_ids = list(range(SMALL["ids"] // 2 + 1, SMALL["ids"] + 1))
    assert len(splits.train) == 4 * 3 * 2
    assert sorted(pid for _, pid, _ in splits.query) == test_ids  # one query per test id
    gallery_pids = [pid for _, pid, _ in splits.gallery]
    assert 0 in gallery_pids and -1 not in gallery_pids
    assert len(splits.gallery) == counts["gallery"] == 4 * 3 * 2 - 4 + 1
    assert not set(splits.query) & set(splits.gallery)
    for _, pid, cam in splits.query:  # a true match in another camera
        assert any(g == pid and c != cam for _, g, c in splits.gallery)
    assert all(len(p) == 4 for p, _, _ in splits.train)
    assert splits.query_img == [(p[0], pid, cam) for p, pid, cam in splits.query]
    assert splits.gallery_img == []
    assert splits.protocol.modes == ("I2V", "V2V") and splits.protocol.query_in_gallery
    assert not Mars.load(root, mars_query_in_gallery=False).protocol.query_in_gallery

    dataset = _via_torchreid("vkd_mars", root)
    assert isinstance(dataset, Mars) and len(dataset.train) == len(splits.train)
    assert dataset.num_train_pids == 4 and len(dataset.query_img) == 4


def _decoded(path, transform):
    """A frame decoded here (OpenCV, BGR -> RGB), through a PIL transform."""
    import cv2
    from PIL import Image

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return transform(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))


@pytest.mark.parametrize("method", ["evenly", "all"])
def test_torchreid_item_is_frames_through_its_pil_transform(mars_root, method):
    """VKDVideoDataset.__getitem__, torchreid's own data path: seq_len evenly spaced frames
    (or all of them) through torchreid's per-frame PIL transform, with pid and camid."""
    import torch
    from torchvision import transforms as T

    root, counts = mars_root  # 8 frames per tracklet
    tf = T.Compose([T.Resize((32, 16)), T.ToTensor()])
    splits = Mars.load(root)
    expected_idx = [0, 2, 4, 6] if method == "evenly" else list(range(8))
    query = compat.data.datasets.init_video_dataset(  # built by torchreid's registry
        "vkd_mars", root=root, mode="query", transform=tf, seq_len=4, sample_method=method,
        verbose=False)
    train = Mars(root=root, mode="train", transform=tf, seq_len=4, sample_method=method,
                 verbose=False)
    assert isinstance(query, Mars)
    assert len(query) == counts["query"] and len(train) == counts["train_tracklets"]
    for dataset, items, rows in ((query, splits.query, range(len(splits.query))),
                                 (train, splits.train, (0, 5, len(splits.train) - 1))):
        for i in rows:
            item = dataset[i]
            paths, pid, camid = items[i]
            assert len(paths) == 8
            assert item["img"].shape == (len(expected_idx), 3, 32, 16)
            assert item["img"].dtype == torch.float32
            assert (item["pid"], item["camid"], item["dsetid"]) == (pid, camid, 0)
            for j, f in enumerate(expected_idx):
                assert torch.equal(item["img"][j], _decoded(paths[f], tf)), (i, j, f)
    if method == "evenly":  # the skipped frames are not what the item holds
        paths = splits.query[0][0]
        item = query[0]
        assert not any(torch.equal(item["img"][j], _decoded(paths[f], tf))
                       for j in range(4) for f in (1, 3, 5, 7))


def _mini_mars(base, int_column):
    """A hand-written MARS: int32 tables + column query_IDX, or double tables + row query_IDX."""
    info = os.path.join(base, "info")
    os.makedirs(info, exist_ok=True)
    img = np.full((16, 8, 3), 128, np.uint8)
    names = {
        "train": ["0001C1T0001F001.jpg", "0001C1T0001F002.jpg", "0002C2T0001F001.jpg"],
        "test": ["0003C1T0001F001.jpg", "0003C2T0001F001.jpg", "0003C2T0001F002.jpg",
                 "0000C3T0001F001.jpg", "00-1C1T0001F001.jpg"],
    }
    tables = {"train": [[1, 2, 1, 1], [3, 3, 2, 2]],
              "test": [[1, 1, 3, 1], [2, 3, 3, 2], [4, 4, 0, 3], [5, 5, -1, 1]]}
    for split, split_names in names.items():
        for n in split_names:
            write_jpeg(os.path.join(base, f"bbox_{split}", n[:4], n), img)
        with open(os.path.join(info, f"{split}_name.txt"), "w") as fh:
            fh.write("\n".join(split_names) + "\n")
        dtype = np.int32 if int_column else np.float64
        scipy.io.savemat(os.path.join(info, f"tracks_{split}_info.mat"),
                         {f"track_{split}_info": np.asarray(tables[split], dtype=dtype)})
    query = np.asarray([1], np.int32).reshape(-1, 1) if int_column else np.asarray([[1.0]])
    scipy.io.savemat(os.path.join(info, "query_IDX.mat"), {"query_IDX": query})


def _rel(splits, base):
    def strip(items):
        return [(tuple(os.path.relpath(p, base) for p in paths), pid, cam)
                for paths, pid, cam in items]
    return strip(splits.train), strip(splits.query), strip(splits.gallery)


def test_mars_int_columns_and_double_rows_parse_identically(tmp_path):
    _mini_mars(str(tmp_path / "a" / "mars"), int_column=True)
    _mini_mars(str(tmp_path / "b" / "mars"), int_column=False)
    a = Mars.load(str(tmp_path / "a"))
    b = Mars.load(str(tmp_path / "b"))
    assert _rel(a, str(tmp_path / "a")) == _rel(b, str(tmp_path / "b"))
    train, query, gallery = _rel(a, str(tmp_path / "a"))
    assert [(len(p), pid, cam) for p, pid, cam in train] == [(2, 0, 0), (1, 1, 1)]
    assert [(len(p), pid, cam) for p, pid, cam in query] == [(1, 3, 0)]
    assert [(len(p), pid, cam) for p, pid, cam in gallery] == [(2, 3, 1), (1, 0, 2)]


def test_mars_errors_name_the_file(tmp_path):
    base = str(tmp_path / "mars")
    _mini_mars(base, int_column=False)
    info = os.path.join(base, "info")
    qpath = os.path.join(info, "query_IDX.mat")

    os.rename(qpath, qpath + ".bak")
    with pytest.raises(FileNotFoundError, match="query_IDX.mat"):
        Mars.load(str(tmp_path))
    os.rename(qpath + ".bak", qpath)

    with open(qpath, "r+b") as fh:  # truncated
        fh.truncate(os.path.getsize(qpath) // 2)
    clear_cache()
    with pytest.raises(ValueError, match="cannot read MATLAB file .*query_IDX.mat"):
        Mars.load(str(tmp_path))

    scipy.io.savemat(qpath, {"wrong": np.asarray([[1.0]])})
    clear_cache()
    with pytest.raises(ValueError, match="query_IDX.mat.*'query_IDX'"):
        Mars.load(str(tmp_path))

    scipy.io.savemat(qpath, {"query_IDX": np.asarray([[1.0]])})
    tpath = os.path.join(info, "tracks_test_info.mat")
    scipy.io.savemat(tpath, {"track_test_info": np.asarray([[1, 1, 3, 1], [2, 9, 3, 2]], float)})
    clear_cache()
    with pytest.raises(ValueError, match=r"tracks_test_info.mat: row 2"):
        Mars.load(str(tmp_path))

    scipy.io.savemat(tpath, {"track_test_info": np.asarray([[1, 1, 3]], float)})
    clear_cache()
    with pytest.raises(ValueError, match="tracks_test_info.mat.*4 columns"):
        Mars.load(str(tmp_path))

    scipy.io.savemat(tpath, {"track_test_info": np.asarray([[1, 1, 3, 1]], float)})
    os.remove(os.path.join(base, "bbox_test", "0003", "0003C1T0001F001.jpg"))
    clear_cache()
    with pytest.raises(FileNotFoundError, match="0003C1T0001F001.jpg"):
        Mars.load(str(tmp_path))


# ----------------------------------------------------------------------------- Duke

def test_duke_synthetic_counts(tmp_path, caplog):
    root, counts = _write("vkd_duke", tmp_path)
    splits = DukeVideo.load(root)
    _check_common(splits, counts, SMALL["cams"])
    assert len(splits.query) == counts["query"] == 4
    assert len(splits.gallery) == counts["gallery"] == 4 * 3 * 2 - 4
    for paths, _, _ in splits.train:
        assert list(paths) == sorted(paths) and len(paths) == 4
    assert splits.query_img == [(p[0], pid, cam) for p, pid, cam in splits.query]
    dataset = _via_torchreid("vkd_duke", root)
    assert len(dataset.gallery) == len(splits.gallery)

    empty = os.path.join(root, "DukeMTMC-VideoReID", "gallery", "0008", "0099")
    os.makedirs(empty)
    clear_cache()
    with caplog.at_level(logging.WARNING, logger="vkd_torchreid.data.duke"):
        assert len(DukeVideo.load(root).gallery) == len(splits.gallery)
    assert "empty tracklet folder" in caplog.text

    bad = os.path.join(empty, "frame.jpg")
    write_jpeg(bad, np.zeros((8, 8, 3), np.uint8))
    clear_cache()
    with pytest.raises(ValueError, match="frame.jpg"):
        DukeVideo.load(root)


def _duke_layout(root):
    """A hand-written Duke: consecutive tracklet folders of one identity and camera.

    Returns {split: [(pid folder, tracklet folder, [frame names])]} in path order.
    """
    layout = {
        "train": [("0001", "0001", ["0001_C1_F0001_X1.jpg", "0001_C1_F0002_X1.jpg"]),
                  ("0001", "0002", ["0001_C1_F0003_X2.jpg"]),  # merges with 0001/0001
                  ("0001", "0003", ["0001_C2_F0001_X3.jpg", "0001_C2_F0002_X3.jpg"]),
                  ("0001", "0004", ["0001_C1_F0009_X4.jpg"]),  # C1 again, after C2: apart
                  ("0002", "0001", ["0002_C1_F0001_X1.jpg"])],  # another identity: apart
        "query": [("0005", "0001", ["0005_C1_F0001_X1.jpg", "0005_C1_F0002_X1.jpg"]),
                  ("0005", "0002", ["0005_C1_F0005_X2.jpg"]),
                  ("0006", "0001", ["0006_C3_F0001_X1.jpg"])],
        "gallery": [("0005", "0003", ["0005_C2_F0001_X3.jpg"]),
                    ("0005", "0004", ["0005_C2_F0004_X4.jpg", "0005_C2_F0005_X4.jpg"]),
                    ("0005", "0005", ["0005_C3_F0001_X5.jpg"]),
                    ("0006", "0002", ["0006_C1_F0001_X2.jpg"]),
                    ("0006", "0003", ["0006_C1_F0007_X3.jpg"])],
    }
    base = os.path.join(root, "DukeMTMC-VideoReID")
    for split, folders in layout.items():
        for pid, trk, names in folders:
            for name in names:
                write_jpeg(os.path.join(base, split, pid, trk, name), np.zeros((8, 4, 3), np.uint8))
    return base, layout


def _reference_duke_groups(split_dir):
    """Our own re-statement of the reference's rule, as an oracle: every jpg of the split in
    sorted pathlib order, consecutive files grouped by the first 7 characters of the name."""
    import itertools
    from pathlib import Path

    paths = sorted(Path(split_dir).glob("**/*.jpg"))
    return [[str(p) for p in group]
            for _, group in itertools.groupby(paths, key=lambda p: p.name[:7])]


def test_duke_reference_merges_consecutive_folders_of_one_identity_and_camera(tmp_path,
                                                                             caplog):
    base, layout = _duke_layout(str(tmp_path))

    def path(split, pid, trk, name):
        return os.path.join(base, split, pid, trk, name)

    def folder_paths(split, i):
        pid, trk, names = layout[split][i]
        return tuple(path(split, pid, trk, n) for n in names)

    with caplog.at_level(logging.INFO, logger="vkd_torchreid.data.duke"):
        ref = DukeVideo.load(str(tmp_path), duke_tracklets="reference")
    tr = folder_paths
    assert ref.train == [(tr("train", 0) + tr("train", 1), 0, 0), (tr("train", 2), 0, 1),
                         (tr("train", 3), 0, 0), (tr("train", 4), 1, 0)]
    assert ref.query == [(tr("query", 0) + tr("query", 1), 5, 0), (tr("query", 2), 6, 2)]
    assert ref.gallery == [(tr("gallery", 0) + tr("gallery", 1), 5, 1), (tr("gallery", 2), 5, 2),
                           (tr("gallery", 3) + tr("gallery", 4), 6, 0)]
    assert ref.query_img == [(path("query", "0005", "0001", "0005_C1_F0001_X1.jpg"), 5, 0),
                             (path("query", "0006", "0001", "0006_C3_F0001_X1.jpg"), 6, 2)]
    for split in ("train", "query", "gallery"):
        assert [list(p) for p, _, _ in getattr(ref, split)] == _reference_duke_groups(
            os.path.join(base, split))
    assert "5 tracklet folders merged into 4 tracklets" in caplog.text
    assert "3 tracklet folders merged into 2 tracklets" in caplog.text
    assert "5 tracklet folders merged into 3 tracklets" in caplog.text

    # 'folder' (the default) is one tracklet per folder, as before
    folder = DukeVideo.load(str(tmp_path))
    assert DukeVideo.load(str(tmp_path), duke_tracklets="folder") == folder
    assert folder.train == [(tr("train", 0), 0, 0), (tr("train", 1), 0, 0),
                            (tr("train", 2), 0, 1), (tr("train", 3), 0, 0),
                            (tr("train", 4), 1, 0)]
    assert folder.query == [(tr("query", 0), 5, 0), (tr("query", 1), 5, 0),
                            (tr("query", 2), 6, 2)]
    assert [p for p, _, _ in folder.gallery] == [tr("gallery", i) for i in range(5)]
    assert folder.query_img == [(p[0], pid, cam) for p, pid, cam in folder.query]

    with pytest.raises(ValueError, match=r"duke_tracklets='x'.*'folder', 'reference'"):
        DukeVideo.load(str(tmp_path), duke_tracklets="x")
    bad = path("gallery", "0006", "0003", "0006_C1_frame.jpg")
    write_jpeg(bad, np.zeros((8, 4, 3), np.uint8))
    clear_cache()
    with pytest.raises(ValueError, match="0006_C1_frame.jpg"):
        DukeVideo.load(str(tmp_path), duke_tracklets="reference")


def test_duke_synthetic_reference_merges_same_camera_tracklets(tmp_path):
    root, counts = _write("vkd_duke", tmp_path)
    folder = DukeVideo.load(root)
    ref = DukeVideo.load(root, duke_tracklets="reference")
    # synthetic: 2 tracklets per (identity, camera) in consecutive folders -> 1 tracklet;
    # the query folder (camera 1, tracklet 1) merges with nothing (the gallery is another split)
    assert len(folder.train) == counts["train_tracklets"] == 24 and len(ref.train) == 12
    assert ref.query == folder.query
    assert len(folder.gallery) == 20 and len(ref.gallery) == 4 * 3
    assert sorted(p for t in ref.gallery for p in t[0]) == sorted(
        p for t in folder.gallery for p in t[0])
    assert all(len(p) == 8 for p, _, _ in ref.train)


# ----------------------------------------------------------------------------- VeRi

def test_veri_synthetic_queries_match_vehicle_and_camera(tmp_path):
    root, counts = _write("vkd_veri", tmp_path)
    splits = VeRi.load(root)
    _check_common(splits, counts, SMALL["cams"])
    assert len(splits.train) == 4 * 3  # one tracklet per (vehicle, camera)
    assert all(len(p) == 2 * 4 for p, _, _ in splits.train)
    assert len(splits.gallery) == counts["gallery"] == 4 * 3 * 2
    assert len(splits.query_img) == counts["query"] == 4 * 3
    assert len(splits.gallery_img) == 4 * 3 * 2 * 4
    assert len(splits.query) == len(splits.query_img)
    for (paths, vid, cam), (qpath, qvid, qcam) in zip(splits.query, splits.query_img):
        assert (vid, cam) == (qvid, qcam) and (paths, vid, cam) in splits.gallery
        assert "image_query" in qpath and all("image_test" in p for p in paths)
    for paths, _, _ in splits.gallery:  # key token not duplicated
        assert len(paths) == len(set(paths)) == 4
    assert splits.protocol.modes == ("I2V", "V2V", "I2I", "V2I")
    assert VeRi.ERASE_RATIO == (0.7, 1.4) and VeRi.INPUT_SIZE == (224, 224)
    assert len(_via_torchreid("vkd_veri", root).query) == len(splits.query)


def test_veri_bad_name_names_file_and_line(tmp_path):
    root, _ = _write("vkd_veri", tmp_path)
    path = os.path.join(root, "VeRi", "name_train.txt")
    with open(path, "a") as fh:
        fh.write("car_12.jpg\n")
    with pytest.raises(ValueError, match=r"name_train.txt: line 97: bad image name 'car_12.jpg'"):
        VeRi.load(root)


def _veri_layout(root, last_line_newline=True):
    """A hand-written VeRi whose test_track.txt has lines with and without a trailing space.

    Vehicle 2, camera 1 has two tracks, the first shorter than the second.
    """
    base = os.path.join(root, "VeRi")
    lines = [
        # key, images; trailing space: nothing lost under 'first'
        "0002_c001_00000100_0.jpg 0002_c001_00000100_0.jpg 0002_c001_00000101_0.jpg \n",
        # longer track of the same vehicle and camera, unsorted and with a duplicate
        "0002_c001_00000200_0.jpg 0002_c001_00000200_0.jpg 0002_c001_00000202_0.jpg "
        "0002_c001_00000201_0.jpg 0002_c001_00000202_0.jpg 0002_c001_00000203_0.jpg \n",
        # no trailing space: 'first' drops 0003_c002_00000302_0.jpg
        "0003_c002_00000300_0.jpg 0003_c002_00000300_0.jpg 0003_c002_00000301_0.jpg "
        "0003_c002_00000302_0.jpg\n",
        # last line, no trailing space: 'first' drops 0003_c003_00000401_0.jpg
        "0003_c003_00000400_0.jpg 0003_c003_00000400_0.jpg 0003_c003_00000401_0.jpg"
        + ("\n" if last_line_newline else ""),
    ]
    test = ["0002_c001_00000100_0.jpg", "0002_c001_00000101_0.jpg", "0002_c001_00000200_0.jpg",
            "0002_c001_00000201_0.jpg", "0002_c001_00000202_0.jpg", "0002_c001_00000203_0.jpg",
            "0003_c002_00000300_0.jpg", "0003_c002_00000301_0.jpg", "0003_c002_00000302_0.jpg",
            "0003_c003_00000400_0.jpg", "0003_c003_00000401_0.jpg"]
    lists = {"train": ["0001_c001_00000010_0.jpg", "0001_c002_00000020_0.jpg",
                       "0004_c001_00000030_0.jpg"],
             "query": ["0002_c001_00000150_0.jpg", "0003_c002_00000350_0.jpg",
                       "0003_c003_00000450_0.jpg"],
             "test": test}
    for split, names in lists.items():
        for name in names:
            write_jpeg(os.path.join(base, f"image_{split}", name), np.zeros((8, 4, 3), np.uint8))
        with open(os.path.join(base, f"name_{split}.txt"), "w", newline="\n") as fh:
            fh.write("".join(f"{n}\n" for n in names))
    with open(os.path.join(base, "test_track.txt"), "w", newline="\n") as fh:
        fh.write("".join(lines))
    return base


def _reference_veri_tracks(base):
    """Our own re-statement of the reference's reading of test_track.txt, as an oracle."""
    tracks = []
    with open(os.path.join(base, "test_track.txt")) as fh:
        for line in fh:
            tokens = line.split(" ")
            tracks.append(tuple(os.path.join(base, "image_test", t)
                                for t in tokens[1:len(tokens) - 1]))
    return tracks


@pytest.mark.parametrize("last_line_newline", [True, False])
def test_veri_query_track_first_vs_longest_and_last_token(tmp_path, caplog, last_line_newline):
    base = _veri_layout(str(tmp_path), last_line_newline)

    def img(*names):
        return tuple(os.path.join(base, "image_test", n) for n in names)

    a = img("0002_c001_00000100_0.jpg", "0002_c001_00000101_0.jpg")
    with caplog.at_level(logging.WARNING, logger="vkd_torchreid.data.veri"):
        longest = VeRi.load(str(tmp_path))
    assert "lose their last image" not in caplog.text
    assert VeRi.load(str(tmp_path), veri_query_track="longest") == longest
    # 'longest': sorted, de-duplicated, nothing dropped
    b_longest = img(*(f"0002_c001_0000020{i}_0.jpg" for i in range(4)))
    line3 = img("0003_c002_00000300_0.jpg", "0003_c002_00000301_0.jpg",
                "0003_c002_00000302_0.jpg")
    line4 = img("0003_c003_00000400_0.jpg", "0003_c003_00000401_0.jpg")
    assert longest.gallery == [(a, 2, 0), (b_longest, 2, 0), (line3, 3, 1), (line4, 3, 2)]
    assert longest.query == [(b_longest, 2, 0), (line3, 3, 1), (line4, 3, 2)]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vkd_torchreid.data.veri"):
        first = VeRi.load(str(tmp_path), veri_query_track="first")
    # 'first': the reference's reading, file order, duplicate kept, last token dropped
    b_first = img("0002_c001_00000200_0.jpg", "0002_c001_00000202_0.jpg",
                  "0002_c001_00000201_0.jpg", "0002_c001_00000202_0.jpg",
                  "0002_c001_00000203_0.jpg")
    assert first.gallery == [(a, 2, 0), (b_first, 2, 0), (line3[:2], 3, 1), (line4[:1], 3, 2)]
    assert [p for p, _, _ in first.gallery] == _reference_veri_tracks(base)
    assert first.query == [(a, 2, 0), (line3[:2], 3, 1), (line4[:1], 3, 2)]
    assert "2 of 4 lines do not end with a space" in caplog.text
    assert "0003_c002_00000302_0.jpg, 0003_c003_00000401_0.jpg" in caplog.text

    for splits in (longest, first):  # unaffected by the option
        assert splits.gallery_img == [(os.path.join(base, "image_test", n), int(n[:4]),
                                       int(n[6:9]) - 1) for n in sorted(
                                           os.listdir(os.path.join(base, "image_test")))]
        assert [p for p, _, _ in splits.query_img] == [
            os.path.join(base, "image_query", n) for n in ("0002_c001_00000150_0.jpg",
                                                           "0003_c002_00000350_0.jpg",
                                                           "0003_c003_00000450_0.jpg")]
        assert splits.train == longest.train
    assert first.train == [((os.path.join(base, "image_train", "0001_c001_00000010_0.jpg"),), 0, 0),
                           ((os.path.join(base, "image_train", "0001_c002_00000020_0.jpg"),), 0, 1),
                           ((os.path.join(base, "image_train", "0004_c001_00000030_0.jpg"),), 1, 0)]

    with pytest.raises(ValueError, match=r"veri_query_track='x'.*'first', 'longest'"):
        VeRi.load(str(tmp_path), veri_query_track="x")


def _reference_veri_gallery_img(base):
    """Our re-statement of the reference's ``gallery_img`` (data/veri/data_manager.py), as an
    oracle: every image of every track, read with ``line.split(' ')[1:-1]``, with the key's
    vehicle and 0-based camera."""
    items = []
    with open(os.path.join(base, "test_track.txt")) as fh:
        for line in fh:
            tokens = line.split(" ")
            pid, camera = map(int, tokens[0].replace("c", "").split("_")[:2])
            items += [(os.path.join(base, "image_test", t), pid, camera - 1)
                      for t in tokens[1:len(tokens) - 1]]
    return items


@pytest.mark.parametrize("last_line_newline", [True, False])
def test_veri_image_gallery_tracks_is_the_references(tmp_path, last_line_newline):
    base = _veri_layout(str(tmp_path), last_line_newline)
    root = str(tmp_path)
    default = VeRi.load(root, veri_query_track="first")
    ref = VeRi.load(root, veri_query_track="first", veri_image_gallery="tracks")
    names = sorted(os.listdir(os.path.join(base, "image_test")))
    assert [p for p, _, _ in default.gallery_img] == [
        os.path.join(base, "image_test", n) for n in names]
    assert VeRi.load(root, veri_query_track="first", veri_image_gallery="name_test") == default
    # the reference's: lines' last images dropped (0003_c002_..302, 0003_c003_..401), the
    # duplicate 0002_c001_..202 twice, the shorter track's images first (file order)
    assert ref.gallery_img == _reference_veri_gallery_img(base)
    img = [os.path.basename(p) for p, _, _ in ref.gallery_img]
    assert len(img) == 2 + 5 + 2 + 1 and img.count("0002_c001_00000202_0.jpg") == 2
    assert "0003_c002_00000302_0.jpg" not in img and "0003_c003_00000401_0.jpg" not in img
    # only the image gallery changes
    for split in ("train", "query", "gallery", "query_img"):
        assert getattr(ref, split) == getattr(default, split), split
    # with 'longest' tracks (sorted, de-duplicated, nothing dropped) the track images are the
    # test images here, each once, track by track
    longest = VeRi.load(root, veri_image_gallery="tracks")
    assert sorted(longest.gallery_img) == sorted(VeRi.load(root).gallery_img)
    with pytest.raises(ValueError, match=r"veri_image_gallery='x'.*'name_test', 'tracks'"):
        VeRi.load(root, veri_image_gallery="x")


def test_veri_first_mode_errors_name_file_and_line(tmp_path):
    base = _veri_layout(str(tmp_path))
    track = os.path.join(base, "test_track.txt")
    with open(track, "a") as fh:  # an image of another camera than the key's
        fh.write("0002_c001_00000100_0.jpg 0002_c002_00000100_0.jpg \n")
    with pytest.raises(ValueError, match=r"test_track.txt: line 5: image '0002_c002_00000100_0"):
        VeRi.load(str(tmp_path), veri_query_track="first")
    with open(track, "w") as fh:  # two spaces: an empty name, as the reference would read it
        fh.write("0002_c001_00000100_0.jpg 0002_c001_00000100_0.jpg  0002_c001_00000101_0.jpg\n")
    clear_cache()
    with pytest.raises(ValueError, match=r"test_track.txt: line 1: bad image name ''"):
        VeRi.load(str(tmp_path), veri_query_track="first")


# ----------------------------------------------------------------------------- ATRW

def test_flank_from_keypoints():
    assert flank(atrw_keypoints(0, 32, 16)) == RIGHT
    assert flank(atrw_keypoints(1, 32, 16)) == LEFT
    assert flank(atrw_keypoints(2, 32, 16)) == UNKNOWN
    triples = [[0, 0, 0]] * 15
    triples[4] = [1, 1, 2]  # right front paw only
    assert flank(triples) == RIGHT
    triples[6] = triples[10] = [1, 1, 1]  # two left keypoints beat one right
    assert flank(triples) == LEFT
    with pytest.raises(ValueError, match="15 keypoints"):
        flank([1, 2, 3])


def test_atrw_synthetic_views_meta_and_protocol(tmp_path, caplog):
    root, counts = _write("vkd_atrw", tmp_path)
    splits = ATRW.load(root)
    _check_common(splits, counts, 3)
    base = os.path.join(root, "atrw")
    with open(os.path.join(base, "atrw_anno_reid_train", "reid_keypoints_train.json")) as fh:
        keypoints = json.load(fh)
    for paths, _, view in splits.train:  # the view is the flank of every image
        assert all(flank(keypoints[os.path.basename(p)]) == view for p in paths)
    for pid in range(4):
        assert sorted(c for _, p, c in splits.train if p == pid) == [RIGHT, LEFT, UNKNOWN]
    with open(os.path.join(base, "gt_test_plain.json")) as fh:
        gt = json.load(fh)
    n = len(gt)
    assert len(splits.gallery_img) == len(splits.query_img) == len(splits.query) == n
    assert [pid for _, pid, _ in splits.gallery_img] == [e["entityid"] for e in gt]
    assert -1 in {pid for _, pid, _ in splits.gallery_img}
    assert [p for p, _, _ in splits.gallery_img] == [p[0] for p, _, _ in splits.gallery]
    meta = splits.meta
    assert all(len(meta[k]) == n for k in ("frame_group", "frame", "query_type"))
    assert meta["frame_group"].dtype == np.int64
    assert list(meta["frame_group"]) == [e["frame"][0] * 100000 + e["frame"][1] for e in gt]
    assert list(meta["frame"]) == [e["frame"][2] for e in gt]
    assert set(meta["query_type"]) == {"sing", "multi"}
    assert splits.protocol.modes == ("I2I",) and splits.protocol.junk == "atrw"

    with caplog.at_level(logging.WARNING, logger="vkd_torchreid.data.atrw"):
        video = ATRW.load(root, atrw_views="video")
    assert "fall back" in caplog.text and video.train == splits.train
    dataset = _via_torchreid("vkd_atrw", root, atrw_views="video_side")
    assert dataset.num_train_pids == 4
    with pytest.raises(ValueError, match="atrw_views.*side"):
        ATRW.load(root, atrw_views="frontal")


def test_atrw_gt_in_annotation_folder_and_malformed_rows(tmp_path):
    root, _ = _write("vkd_atrw", tmp_path, ids=4, cams=2, tracklets=1, frames=2)
    base = os.path.join(root, "atrw")
    anno = os.path.join(base, "atrw_anno_reid_test")
    os.rename(os.path.join(base, "gt_test_plain.json"), os.path.join(anno, "gt_test_plain.json"))
    assert len(ATRW.load(root).gallery_img) == 2 * 2 * 2 + 2

    with open(os.path.join(anno, "gt_test_plain.json"), "w") as fh:
        json.dump([{"imgid": 0, "entityid": 3, "query": "sing", "frame": [1, 1, 0]},
                   {"imgid": 1, "entityid": 3, "query": "both", "frame": [1, 1, 2]}], fh)
    clear_cache()
    with pytest.raises(ValueError, match="gt_test_plain.json: entry 1: expected"):
        ATRW.load(root)

    with open(os.path.join(base, "atrw_anno_reid_train", "reid_list_train.csv"), "a") as fh:
        fh.write("tiger,000001.jpg\n")
    clear_cache()
    with pytest.raises(ValueError, match=r"reid_list_train.csv: line 9: expected 'entityid,"):
        ATRW.load(root)


# ----------------------------------------------------------------------------- synthetic

def _digest(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha1(fh.read()).hexdigest()
    return out


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "vkd_mars" else pytest.mark.slow)
                                  for n in sorted(DATASETS)])  # one layout in the fast tier
def test_synthetic_is_byte_identical_and_encodes_each_image_once(tmp_path, name, monkeypatch):
    from vkd_torchreid.synthetic import writers

    encoded = []

    def counting(real_write):
        def counting_write(path, *args, **kwargs):
            encoded.append(os.path.abspath(path))
            return real_write(path, *args, **kwargs)
        return counting_write

    # JPEG frames; iLIDS-VID and PRID2011 frames are PNG
    monkeypatch.setattr(writers, "write_jpeg", counting(writers.write_jpeg))
    monkeypatch.setattr(writers, "write_png", counting(writers.write_png))
    counts = write_synthetic(name, str(tmp_path / "a"), ids=8, cams=3, tracklets=2, frames=8,
                             seed=4)
    # the work is one encode per image of the dataset: no image written twice
    on_disk = sorted(os.path.abspath(os.path.join(d, f))
                     for d, _, files in os.walk(tmp_path / "a") for f in files
                     if f.endswith((".jpg", ".png")))
    assert len(encoded) == len(set(encoded)) == counts["images"]
    assert sorted(encoded) == on_disk
    write_synthetic(name, str(tmp_path / "b"), ids=8, cams=3, tracklets=2, frames=8, seed=4)
    first = _digest(str(tmp_path / "a"))
    assert first == _digest(str(tmp_path / "b"))
    write_synthetic(name, str(tmp_path / "a"), ids=8, cams=3, tracklets=2, frames=8, seed=4)
    assert _digest(str(tmp_path / "a")) == first


def test_synthetic_refuses_foreign_data_and_bad_sizes(tmp_path):
    os.makedirs(tmp_path / "mars")
    (tmp_path / "mars" / "real.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="mars"):
        write_synthetic("vkd_mars", str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset"):
        write_synthetic("market1501", str(tmp_path))
    with pytest.raises(ValueError, match="cams >= 2"):
        write_synthetic("VeRi", str(tmp_path), cams=1)


def test_synthetic_identities_are_recognisable_across_cameras():
    """Even a crude colour profile of the body finds the same identity, seen from the same
    side, in another camera."""
    from vkd_torchreid.synthetic import render

    def feat(pid, cam):
        img = render(0, pid, cam, False, 1, 1, 64, 32, view=0)[0].astype(np.float32)
        return np.sort(img[16:60, 8:24].reshape(-1, 3), axis=0)[::8].ravel()

    ids = range(1, 17)
    gallery = [(feat(p, c), p) for p in ids for c in (2, 3)]
    hits = [min(gallery, key=lambda g: np.linalg.norm(g[0] - feat(p, 1)))[1] == p for p in ids]
    assert np.mean(hits) > 0.5  # chance: 1/16


def test_synthetic_views_matter():
    """One view of a person matches several identities; front and back together far fewer."""
    from vkd_torchreid.synthetic import VIEWS, render

    def torso(pid, view):
        img = render(0, pid, 1, False, 1, 1, 64, 32, view=view)[0].astype(np.float32)
        return img[16:36, 12:20].reshape(-1, 3).mean(0)

    ids = range(1, 49)
    front = np.stack([torso(p, 0) for p in ids])
    back = np.stack([torso(p, 1) for p in ids])

    def ambiguous_pairs(feats):
        d = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
        return int((d[np.triu_indices(len(feats), 1)] < 30).sum())

    one_view = ambiguous_pairs(front)
    two_views = ambiguous_pairs(np.concatenate([front, back], 1) / np.sqrt(2))
    assert one_view >= 10 and two_views < one_view / 2, (one_view, two_views)
    # the viewpoint changes what the camera sees
    same_pid = [np.abs(torso(p, 0) - torso(p, 1)).sum() > 30 for p in ids]
    assert np.mean(same_pid) > 0.5 and len(VIEWS) == 3


# ----------------------------------------------------------------------------- check tool

def test_check_dataset_reports_statistics_and_unknown_names(tmp_path):
    root, _ = _write("vkd_duke", tmp_path)
    splits, problems = check_dataset("vkd_duke", root)
    assert problems == []
    table = format_statistics(splits)
    assert table.splitlines()[0].split() == ["split", "ids", "items", "images", "cameras"]
    assert "gallery" in table
    assert table.splitlines()[-1].startswith("protocol: I2V, V2V; junk: same_camera")
    with pytest.raises(ValueError, match="vkd_mars"):
        check_dataset("market1501", root)
    with pytest.raises(ValueError, match="atrw_views"):
        check_dataset("vkd_duke", root, atrw_views="side")


def _run_tool(*args):
    return subprocess.run([sys.executable, CHECK_TOOL, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.mark.slow  # a tools/check_dataset.py subprocess (vkd-reid check-dataset)
def test_check_tool_reports_a_corrupt_image(tmp_path):
    root, _ = _write("vkd_mars", tmp_path, ids=4, cams=2, tracklets=1, frames=2)
    train = os.path.join(root, "mars", "bbox_train")
    pid_dir = os.path.join(train, sorted(os.listdir(train))[0])
    bad = os.path.join(pid_dir, sorted(os.listdir(pid_dir))[1])
    with open(bad, "wb") as fh:
        fh.write(b"\x00garbage, not a JPEG")
    proc = _run_tool("--root", root, "-s", "vkd_mars")
    assert proc.returncode == 1, proc.stderr
    assert bad in proc.stdout and "1 problem(s)" in proc.stdout


@pytest.mark.slow  # tools/check_dataset.py subprocesses
@pytest.mark.parametrize("where", ["root", "dataset folder"])
def test_check_tool_missing_layout_is_one_error_line(tmp_path, where):
    root = str(tmp_path / "missing") if where == "root" else str(tmp_path)
    proc = _run_tool("--root", root, "-s", "vkd_mars")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0]
    assert (root if where == "root" else os.path.join(root, "mars")) in lines[0]


# ----------------------------------------------------------------------------- options via config

def test_duke_and_veri_options_flow_through_config_and_datamanager(tmp_path):
    from vkd_torchreid.config import build_config
    from vkd_torchreid.data.manager import build_datamanager

    from conftest import tiny_config

    root = str(tmp_path / "data")
    write_synthetic("vkd_duke", root, **SMALL)
    write_synthetic("vkd_veri", root, **SMALL)
    with open(os.path.join(root, "VeRi", "test_track.txt")) as fh:
        track_lines = fh.read().split("\n")[:-1]
    assert track_lines and not any(line.endswith(" ") for line in track_lines)

    def dm_for(*opts):
        cfg = tiny_config(root, str(tmp_path / "log"), "data.sources", "['vkd_duke']",
                          "data.targets", "['vkd_duke', 'vkd_veri']", *opts)
        return cfg, build_datamanager(cfg)

    cfg, default = dm_for()
    assert cfg.data.duke_tracklets == "folder" and cfg.data.veri_query_track == "longest"
    assert default.dataset_options["duke_tracklets"] == "folder"
    cfg, ref = dm_for("data.duke_tracklets", "reference", "data.veri_query_track", "first")
    options = ref.dataset_options
    assert (options["duke_tracklets"], options["veri_query_track"]) == ("reference", "first")

    # Duke: 2 consecutive tracklet folders per (identity, camera) merge into one
    assert len(default.train_tracklets) == 24 and len(ref.train_tracklets) == 12
    assert len(default.splits["vkd_duke"].gallery) == 20
    assert len(ref.splits["vkd_duke"].gallery) == 12
    assert default.num_train_pids == ref.num_train_pids == 4
    # VeRi: synthetic lines have no trailing space -> 'first' drops each track's last image
    d, r = default.splits["vkd_veri"], ref.splits["vkd_veri"]
    assert [len(p) for p, _, _ in d.gallery] == [4] * 24
    assert [len(p) for p, _, _ in r.gallery] == [3] * 24
    assert [p[:3] for p, _, _ in d.gallery] == [p for p, _, _ in r.gallery]
    assert [p for p, _, _ in r.query] == [p[:3] for p, _, _ in d.query]
    assert r.gallery_img == d.gallery_img and len(d.gallery_img) == 96
    assert ref.test_dataset["vkd_veri"]["gallery"] == r.gallery
    assert cfg.data.veri_image_gallery == "name_test"
    cfg, tracks = dm_for("data.veri_query_track", "first", "data.veri_image_gallery", "tracks")
    assert tracks.dataset_options["veri_image_gallery"] == "tracks"
    t = tracks.splits["vkd_veri"]
    assert t.gallery_img == [(p, vid, cam) for paths, vid, cam in r.gallery for p in paths]
    assert len(t.gallery_img) == 72 and tracks.test_dataset["vkd_veri"]["gallery_img"] == t.gallery_img

    for key, allowed in (("data.duke_tracklets", "'folder', 'reference'"),
                         ("data.veri_query_track", "'first', 'longest'"),
                         ("data.veri_image_gallery", "'name_test', 'tracks'")):
        with pytest.raises(ValueError) as info:
            build_config("", [key, "x"])
        message = str(info.value)
        assert len(message.splitlines()) == 1 and key in message and allowed in message


@pytest.mark.slow  # three tools/check_dataset.py subprocesses
def test_check_tool_passes_duke_and_veri_options(tmp_path):
    base, _ = _duke_layout(str(tmp_path))
    _veri_layout(str(tmp_path))
    splits, problems = check_dataset("vkd_duke", str(tmp_path), duke_tracklets="reference")
    assert problems == [] and len(splits.train) == 4
    proc = _run_tool("--root", str(tmp_path), "-s", "vkd_duke", "--no-decode",
                     "data.duke_tracklets", "reference")
    assert proc.returncode == 0, proc.stderr
    train_row = [line.split() for line in proc.stdout.splitlines() if line.startswith("train")]
    assert train_row == [["train", "2", "4", "7", "2"]]
    proc = _run_tool("--root", str(tmp_path), "-s", "vkd_veri", "--no-decode",
                     "data.veri_query_track", "first")
    assert proc.returncode == 0, proc.stderr
    gallery_row = [line.split() for line in proc.stdout.splitlines()
                   if line.startswith("gallery ")]
    assert gallery_row == [["gallery", "2", "4", "10", "3"]]
    proc = _run_tool("--root", str(tmp_path), "-s", "vkd_duke", "data.veri_query_track", "x")
    assert proc.returncode == 2 and "data.veri_query_track" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_veri_first_mode_accepts_a_bare_vehicle_camera_key(tmp_path):
    base = _veri_layout(str(tmp_path))
    track = os.path.join(base, "test_track.txt")
    with open(track, "w") as fh:  # key '<vid4>_c<cam3>' instead of an image name
        fh.write("0002_c001 0002_c001_00000100_0.jpg 0002_c001_00000101_0.jpg \n")
    clear_cache()
    first = VeRi.load(str(tmp_path), veri_query_track="first")
    assert [(len(p), vid, cam) for p, vid, cam in first.gallery] == [(2, 2, 0)]
    with open(track, "w") as fh:
        fh.write("car_c001 0002_c001_00000100_0.jpg \n")
    clear_cache()
    with pytest.raises(ValueError, match=r"line 1: bad track key 'car_c001'"):
        VeRi.load(str(tmp_path), veri_query_track="first")
