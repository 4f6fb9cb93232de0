"""iLIDS-VID and PRID2011: the same splits as torchreid's own classes, the ten splits, the
multi-view sampler on two tracklets per identity, and one-line errors for bad input."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil

import numpy as np
import pytest

from vkd_torchreid.compat import TorchreidILIDSVID, TorchreidPRID2011
from vkd_torchreid.data import ILIDSVID, PRID2011, clear_cache
from vkd_torchreid.data.sampler import IdentityIndex, MultiViewSampler, sample_item
from vkd_torchreid.synthetic import write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(ids=12, frames=4, height=16, width=8)


def _check_tool():
    from vkd_torchreid import cli

    return lambda argv: cli.main(["check-dataset", *argv])


@pytest.fixture(scope="module")
def ilids300(tmp_path_factory):
    """A 300-person iLIDS-VID world: torchreid's class asserts exactly 300 people."""
    root = str(tmp_path_factory.mktemp("ilids300"))
    write_synthetic("vkd_ilidsvid", root, ids=300, frames=2, height=16, width=8)
    return root


@pytest.fixture(scope="module")
def ilids300_torchreid(ilids300):
    """A copy of that world for torchreid's class, which writes splits.json into it."""
    copy = ilids300 + "_torchreid"
    shutil.copytree(ilids300, copy)
    return copy


def _torchreid(cls, root, split_id):
    with contextlib.redirect_stdout(io.StringIO()):
        return cls(root=root, split_id=split_id, transform=lambda x: x)


def _person(path):
    return os.path.basename(os.path.dirname(path))


def _same_as_torchreid(ours, theirs):
    """Identical tracklets (frames, camera) in the same order, identities mapped one to one."""
    for name in ("train", "query", "gallery"):
        mine = getattr(ours, name)
        other = [item[:3] for item in getattr(theirs, name)]  # torchreid adds a dataset id
        assert [(p, c) for p, _, c in mine] == [(tuple(sorted(p)), c) for p, _, c in other], name
        mapping = {}
        for (_, pid, _), (_, tpid, _) in zip(mine, other):
            assert mapping.setdefault(tpid, pid) == pid, name
        assert len(set(mapping.values())) == len(mapping), name
    # query and gallery share identities: a test person keeps one pid in both
    for paths, pid, _ in [*ours.query, *ours.gallery]:
        assert pid == int(re.search(r"(\d+)$", _person(paths[0])).group(1))


@pytest.mark.parametrize("split_id", range(10))
def test_ilidsvid_parses_as_torchreid(ilids300, ilids300_torchreid, split_id):
    theirs_root = ilids300_torchreid
    ours = ILIDSVID.load(ilids300, split_id=split_id)
    theirs = _torchreid(TorchreidILIDSVID, theirs_root, split_id)
    assert len(ours.train) == 300 and len(ours.query) == len(ours.gallery) == 150
    assert {c for _, _, c in ours.query} == {0} and {c for _, _, c in ours.gallery} == {1}
    ours = dataclasses.replace(ours, **{  # the same files under torchreid's copy
        name: [(tuple(p.replace(ilids300, theirs_root) for p in paths), pid, cam)
               for paths, pid, cam in getattr(ours, name)]
        for name in ("train", "query", "gallery")})
    _same_as_torchreid(ours, theirs)
    clear_cache()


def test_ilidsvid_splits_differ_and_follow_the_mat(ilids300):
    import scipy.io

    mat = os.path.join(ilids300, "ilids-vid", "train-test people splits",
                       "train_test_splits_ilidsvid.mat")
    ls_set = scipy.io.loadmat(mat)["ls_set"].astype(int)
    people = sorted(os.listdir(os.path.join(ilids300, "ilids-vid", "i-LIDS-VID", "sequences",
                                            "cam1")))
    tests = []
    for split_id in (0, 9):
        splits = ILIDSVID.load(ilids300, split_id=split_id)
        test = sorted(_person(p[0]) for p, _, _ in splits.query)
        assert test == sorted(people[i - 1] for i in ls_set[split_id, :150])
        assert not set(test) & {_person(p[0]) for p, _, _ in splits.train}
        tests.append(test)
    assert tests[0] != tests[1]


@pytest.mark.parametrize("split_id", range(10))
def test_prid2011_parses_as_torchreid(tmp_path, split_id):
    root = str(tmp_path)
    counts = write_synthetic("vkd_prid2011", root, **SMALL)
    ours = PRID2011.load(root, split_id=split_id)
    theirs = _torchreid(TorchreidPRID2011, root, split_id)
    _same_as_torchreid(ours, theirs)
    assert len(ours.query) == counts["query"] and len(ours.train) == counts["train_tracklets"]
    # the json, not the folders, decides who counts: people of one camera, and one person of
    # both cameras, are in no split
    listed = {_person(p[0]) for s in ("train", "query") for p, _, _ in getattr(ours, s)}
    cam_a = os.listdir(os.path.join(root, "prid2011", "prid_2011", "multi_shot", "cam_a"))
    assert len(listed) == SMALL["ids"] - 1 < len(cam_a)


@pytest.mark.parametrize("name,cls", [("vkd_ilidsvid", ILIDSVID), ("vkd_prid2011", PRID2011)])
def test_protocol_and_i2v_queries(tmp_path, name, cls):
    write_synthetic(name, str(tmp_path), **SMALL)
    splits = cls.load(str(tmp_path), split_id=2)
    assert splits.protocol.modes == ("I2V", "V2V")
    assert splits.query_img == [(p[0], pid, cam) for p, pid, cam in splits.query]
    assert all(list(p) == sorted(p) and p[0].endswith(".png") for p, _, _ in splits.train)
    assert sorted({pid for _, pid, _ in splits.train}) == list(range(splits.num_train_pids))
    # one tracklet per identity and camera in train
    assert sorted((pid, cam) for _, pid, cam in splits.train) == sorted(
        (pid, cam) for pid in range(splits.num_train_pids) for cam in (0, 1))


@pytest.mark.parametrize("strategy", ["multiview", "multiview_random"])
def test_sampler_teacher_frames_come_from_both_cameras(tmp_path, strategy):
    write_synthetic("vkd_ilidsvid", str(tmp_path), **SMALL)
    train = ILIDSVID.load(str(tmp_path), split_id=0).train
    index = IdentityIndex(train)
    rng = np.random.RandomState(0)
    for pid in range(6):
        assert index.num_cameras(pid) == 2 and len(index.tracklets[pid]) == 2
        for _ in range(10):
            _, _, refs = sample_item(index, pid, 8, strategy, rand=rng)
            cams = [train[t][2] for t, _ in refs]
            assert all(train[t][1] == pid for t, _ in refs)
            assert cams.count(0) == cams.count(1) == 4  # N = 8 frames, half per camera
    sampler = MultiViewSampler(train, batch_size=4, num_instances=2, seq_len=8,
                               strategy=strategy, student_frames=2, seed=1)
    batches = list(sampler)
    assert len(batches) == 3  # 6 identities, P = 2
    for batch in batches:
        for _, _, refs, student in batch:
            assert {train[t][2] for t, _ in refs} == {0, 1} and len(student) == 2


@pytest.mark.parametrize("name,cls", [("vkd_ilidsvid", ILIDSVID), ("vkd_prid2011", PRID2011)])
def test_torchreid_registry_passes_split_id(tmp_path, name, cls):
    from vkd_torchreid import compat

    write_synthetic(name, str(tmp_path), **SMALL)
    dataset = compat.data.datasets.init_video_dataset(name, root=str(tmp_path), mode="train",
                                                      verbose=False, split_id=3)
    assert isinstance(dataset, cls)
    assert dataset.splits.query == cls.load(str(tmp_path), split_id=3).query
    assert dataset.splits.query != cls.load(str(tmp_path), split_id=4).query


def test_synthetic_split_files_are_reproducible(tmp_path):
    files = []
    for i in range(2):
        root = str(tmp_path / str(i))
        write_synthetic("vkd_ilidsvid", root, **SMALL)
        write_synthetic("vkd_prid2011", root, **SMALL)
        with open(os.path.join(root, "ilids-vid", "train-test people splits",
                               "train_test_splits_ilidsvid.mat"), "rb") as fh:
            mat = fh.read()
        with open(os.path.join(root, "prid2011", "splits_prid2011.json"), "rb") as fh:
            files.append((mat, fh.read()))
    assert files[0] == files[1]
    assert len(json.loads(files[0][1])) == 10


# ----------------------------------------------------------------------------- bad input

def _tree(root):
    return sorted(os.path.join(d, n) for d, ds, fs in os.walk(root) for n in ds + fs)


def _bad(tmp_path, capsys, name, split_id=None):
    """Runs the check tool; returns its one error line after checking nothing was written."""
    clear_cache()
    before = _tree(str(tmp_path))
    args = ["--no-decode", "--root", str(tmp_path), "-s", name]
    rc = _check_tool()(args + ([] if split_id is None else ["data.split_id", str(split_id)]))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert _tree(str(tmp_path)) == before  # nothing written (torchreid writes splits.json)
    return err[0]


@pytest.mark.parametrize("name", ["vkd_ilidsvid", "vkd_prid2011"])
def test_missing_split_file(tmp_path, capsys, name):
    write_synthetic(name, str(tmp_path), **SMALL)
    path = (os.path.join(str(tmp_path), "ilids-vid", "train-test people splits",
                         "train_test_splits_ilidsvid.mat") if name == "vkd_ilidsvid"
            else os.path.join(str(tmp_path), "prid2011", "splits_prid2011.json"))
    os.remove(path)
    line = _bad(tmp_path, capsys, name)
    assert f"missing file {path}" in line


@pytest.mark.parametrize("name", ["vkd_ilidsvid", "vkd_prid2011"])
def test_split_id_out_of_range(tmp_path, capsys, name):
    write_synthetic(name, str(tmp_path), **SMALL)
    line = _bad(tmp_path, capsys, name, split_id=10)  # the config's range, before any file
    assert "data.split_id=10" in line and "[0, 9]" in line
    # the dataset's own check, for a caller that bypasses the config
    clear_cache()
    cls = ILIDSVID if name == "vkd_ilidsvid" else PRID2011
    with pytest.raises(ValueError, match=r"data.split_id=10 is out of range.*holds 10 splits"):
        cls.load(str(tmp_path), split_id=10)


def test_split_id_beyond_a_short_split_file(tmp_path, capsys):
    write_synthetic("vkd_prid2011", str(tmp_path), **SMALL)
    path = os.path.join(str(tmp_path), "prid2011", "splits_prid2011.json")
    with open(path, encoding="utf-8") as fh:
        two = json.load(fh)[:2]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(two, fh)
    line = _bad(tmp_path, capsys, "vkd_prid2011", split_id=3)
    assert f"data.split_id=3 is out of range: {path} holds 2 splits (0-1)" in line


def test_split_id_out_of_range_in_the_config():
    from vkd_torchreid.config import build_config

    with pytest.raises(ValueError, match=r"data.split_id=10 is invalid: expected an integer "
                                         r"in \[0, 9\]"):
        build_config("", ["data.sources", "['vkd_ilidsvid']", "data.split_id", "10"])


@pytest.mark.parametrize("name,cam", [("vkd_ilidsvid", "i-LIDS-VID/sequences/cam2"),
                                      ("vkd_prid2011", "prid_2011/multi_shot/cam_a")])
def test_tracklet_folder_without_frames(tmp_path, capsys, name, cam):
    write_synthetic(name, str(tmp_path), **SMALL)
    folder = os.path.join(str(tmp_path), ILIDSVID.dataset_dir if name == "vkd_ilidsvid"
                          else PRID2011.dataset_dir, cam)
    person = os.path.join(folder, sorted(os.listdir(folder))[3])
    for frame in os.listdir(person):
        os.remove(os.path.join(person, frame))
    line = _bad(tmp_path, capsys, name)
    assert f"tracklet folder {person} holds no .png frames" in line


def test_prid_swapped_camera_folders(tmp_path, capsys):
    write_synthetic("vkd_prid2011", str(tmp_path), **SMALL)
    shots = os.path.join(str(tmp_path), "prid2011", "prid_2011", "multi_shot")
    os.rename(os.path.join(shots, "cam_a"), os.path.join(shots, "tmp"))
    os.rename(os.path.join(shots, "cam_b"), os.path.join(shots, "cam_a"))
    os.rename(os.path.join(shots, "tmp"), os.path.join(shots, "cam_b"))
    line = _bad(tmp_path, capsys, "vkd_prid2011")
    assert shots in line and "swapped" in line


def test_ilids_person_missing_from_a_camera(tmp_path, capsys):
    write_synthetic("vkd_ilidsvid", str(tmp_path), **SMALL)
    cam2 = os.path.join(str(tmp_path), "ilids-vid", "i-LIDS-VID", "sequences", "cam2")
    gone = os.path.join(cam2, sorted(os.listdir(cam2))[0])
    shutil.rmtree(gone)
    assert f"missing person folder {gone}" in _bad(tmp_path, capsys, "vkd_ilidsvid")


def test_check_tool_healthy_world(tmp_path, capsys):
    write_synthetic("vkd_prid2011", str(tmp_path), **SMALL)
    clear_cache()
    rc = _check_tool()(["--root", str(tmp_path), "-s", "vkd_prid2011", "data.split_id", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "vkd_prid2011" in out and out.strip().endswith("ok")


# ----------------------------------------------------------------------------- downloads

def _ilids_tar(tmp_path, tops=("i-LIDS-VID", "train-test people splits")):
    import tarfile

    src = str(tmp_path / "src")
    write_synthetic("vkd_ilidsvid", src, **SMALL)
    path = str(tmp_path / "iLIDS-VID.tar")
    with tarfile.open(path, "w") as tf:
        for top in tops:
            tf.add(os.path.join(src, "ilids-vid", top), arcname=top)
    return path


def _download(capsys, *argv):
    from vkd_torchreid.apps import download

    code = download.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def test_download_ilidsvid_over_http_lays_out_what_the_loader_reads(tmp_path, capsys,
                                                                   monkeypatch):
    import functools
    import http.server
    import threading

    from vkd_torchreid.apps.download import SOURCES

    tar = _ilids_tar(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=os.path.dirname(tar))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/iLIDS-VID.tar"
        monkeypatch.setitem(SOURCES, "ilidsvid", dataclasses.replace(SOURCES["ilidsvid"],
                                                                     url=url))
        root = str(tmp_path / "data")
        code, out, err = _download(capsys, "ilidsvid", "--root", root)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 0, err
    base = os.path.join(root, "ilids-vid")
    assert sorted(os.listdir(base)) == ["i-LIDS-VID", "iLIDS-VID.tar", "train-test people splits"]
    assert f"ilidsvid: {os.path.join(base, 'i-LIDS-VID')}" in out
    clear_cache()
    assert len(ILIDSVID.load(root, split_id=5).query) == 6
    # a second run finds it complete and fetches nothing (the server is gone)
    code, out, err = _download(capsys, "ilidsvid", "--root", root)
    assert code == 0, err


def test_download_ilidsvid_refuses_a_tar_without_the_split_folder(tmp_path, capsys):
    tar = _ilids_tar(tmp_path, tops=("i-LIDS-VID",))
    root = str(tmp_path / "data")
    base = os.path.join(root, "ilids-vid")
    os.makedirs(base)
    shutil.copy(tar, os.path.join(base, "iLIDS-VID.tar"))  # put there by hand: no network
    code, out, err = _download(capsys, "ilidsvid", "--root", root)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "train-test people splits" in err[0] and "iLIDS-VID.tar" in err[0]
    assert os.listdir(base) == ["iLIDS-VID.tar"]  # nothing unpacked


def test_download_prid2011_prints_where_and_the_layout(tmp_path, capsys):
    code, out, err = _download(capsys, "prid2011", "--root", str(tmp_path))
    assert code == 0 and err == []
    for needle in ("tugraz.at", "splits_prid2011.json", "1qw7SI7YdIgfHetIQO7LLW4SHpL_qkieT",
                   "multi_shot/cam_a/", "vkd_prid2011", str(tmp_path)):
        assert needle in out
    assert os.listdir(str(tmp_path)) == []


# ----------------------------------------------------------------------------- through the CLI

def _cli_opts(config, root, save, *extra):
    from conftest import TINY

    return ["--config-file", os.path.join(REPO, "configs", config), "--root", root,
            "data.save_dir", save, *TINY, "train.max_epoch", "1", "train.batch_size", "4",
            "sampler.num_instances", "2", "video.seq_len", "4", "train.stepsize", "[1]",
            "train.amp", "", "test.amp", "", *extra]


@pytest.mark.slow  # a teacher, its student and an evaluation, one epoch each
def test_prid2011_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    from vkd_torchreid import cli

    root = str(tmp_path / "data")
    write_synthetic("vkd_prid2011", root, ids=12, frames=4, height=32, width=16)
    teacher = str(tmp_path / "teacher")
    assert cli.main(_cli_opts("teacher_prid2011_r50.yaml", root, teacher,
                              "data.split_id", "7")) == 0
    ckpt = os.path.join(teacher, "model", "latest.pth.tar")
    student = str(tmp_path / "student")
    assert cli.main(_cli_opts("vkd_prid2011_r50.yaml", root, student, "data.split_id", "7",
                              "vkd.teacher_checkpoint", ckpt)) == 0
    evaluation = str(tmp_path / "eval")
    assert cli.main(["eval", *_cli_opts("vkd_prid2011_r50.yaml", root, evaluation,
                                        "data.split_id", "7", "vkd.teacher_checkpoint", ckpt,
                                        "model.load_weights",
                                        os.path.join(student, "model", "latest.pth.tar"))]) == 0
    for run in (teacher, student, evaluation):
        with open(os.path.join(run, "results.json"), encoding="utf-8") as fh:
            metrics = json.load(fh)["vkd_prid2011"]
        assert set(metrics) == {"I2V", "V2V"}
        assert all(0.0 <= metrics[m]["rank1"] <= metrics[m]["rank20"] <= 1.0 for m in metrics)
    capsys.readouterr()


@pytest.mark.parametrize("value,needle", [("12", "data.split_id=12 is invalid"),
                                          ("-1", "data.split_id=-1 is invalid")])
def test_cli_split_id_out_of_range_writes_nothing(tmp_path, capsys, value, needle):
    from vkd_torchreid import cli

    root = str(tmp_path / "data")
    write_synthetic("vkd_ilidsvid", root, **SMALL)
    save = str(tmp_path / "run")
    code = cli.main(_cli_opts("teacher_ilidsvid_r50.yaml", root, save, "data.split_id", value))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not os.path.exists(save)


def test_cli_missing_split_file_writes_nothing(tmp_path, capsys):
    from vkd_torchreid import cli

    root = str(tmp_path / "data")
    write_synthetic("vkd_prid2011", root, **SMALL)
    path = os.path.join(root, "prid2011", "splits_prid2011.json")
    os.remove(path)
    save = str(tmp_path / "run")
    code = cli.main(_cli_opts("teacher_prid2011_r50.yaml", root, save))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: missing file {path}")
    assert not os.path.exists(save)
