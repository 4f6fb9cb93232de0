"""``tools/download.py``: every transfer goes through the real gdown to a real HTTP server on
127.0.0.1 (never the internet): one that honours Range, one that ignores it (200), one that
fails (404/500), one that drops the connection midway. Google Drive itself is never contacted:
its folder listing and its file downloads are replaced here.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from vkd_torchreid.apps import download as dl
from vkd_torchreid.apps.download import sources
from vkd_torchreid.data.mars import Mars
from vkd_torchreid.models import build_model, load_weights

#: The module (the package's ``fetch`` is its function of that name).
fetch_module = importlib.import_module("vkd_torchreid.apps.download.fetch")
#: What gdown.download_folder(skip_download=True) lists: a file id and its path in the folder.
DriveFile = collections.namedtuple("DriveFile", "id path")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # gdown closes its first response of a resume early: a broken pipe here


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1; ``mode``: ``range`` (206 + Content-Range),
    ``norange`` (always 200), ``fail`` (``status``), ``drop`` (the first ``drops`` responses
    send half the body then close), ``html`` (a 200 web page)."""

    def __init__(self, files, mode="range", status=404, drops=1):
        self.files, self.mode, self.status, self.drops = dict(files), mode, status, drops
        self.requests = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                name = self.path.lstrip("/")
                if server.mode == "fail" or name not in server.files:
                    self.send_error(server.status if server.mode == "fail" else 404)
                    return
                if server.mode == "html":
                    body = b"<html><body>quota exceeded</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = server.files[name]
                start = 0
                if rng and server.mode != "norange":
                    start = int(re.match(r"bytes=(\d+)-$", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "drop" and server.drops > 0:
                    server.drops -= 1
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        Handler.timeout = 10  # a stalled client cannot hold a handler thread for longer
        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch):
    monkeypatch.setattr(fetch_module, "RETRY_DELAY", 0.0)


def _run(capsys, *argv):
    code = dl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _zip(entries, compression=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _archive(n=1_500_000):
    """A small archive in the released layout (a top folder with one experiment); larger than
    gdown's 512 KiB chunk, so a transfer dropped at half has written some bytes."""
    rnd = random.Random(0).randbytes(n)  # incompressible: the archive is about n bytes
    return _zip({"baseline_public/mars/base_mars_resnet50/params/hparams.json":
                 json.dumps({"backbone_type": "resnet50", "num_classes": 625}),
                 "baseline_public/mars/base_mars_resnet50/chk/chk_end": rnd})


def _leftovers(root):
    """Every entry of ``root`` (hidden ones included), recursively."""
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


def _reference_experiment(tmp_path):
    """A released-style experiment (params/hparams.json + chk/chk_end in the reference's key
    names) of a small MobileNetV2, zipped as ``distilled_public/...``; and its network."""
    model = build_model("vkd_mobilenetv2", 5, pretrained=False)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            state["backbone.features_layers." + key[len("backbone."):]] = value
        elif key.startswith("bnneck."):
            state["classifier.bottleneck." + key[len("bnneck."):]] = value
        else:
            assert key == "classifier.weight"
            state["classifier.classifier.weight"] = value
    buf = io.BytesIO()
    torch.save(state, buf)
    exp = "distilled_public/mars/selfdistill/distill_mars_mobilenet"
    data = _zip({f"{exp}/params/hparams.json": json.dumps({"backbone_type": "mobilenet",
                                                            "num_classes": 5}),
                 f"{exp}/chk/chk_di_1": buf.getvalue()}, zipfile.ZIP_STORED)
    return data, exp, model


def test_download_unpacks_a_folder_load_weights_accepts(tmp_path, capsys):
    data, exp, model = _reference_experiment(tmp_path)
    root = tmp_path / "logs"
    with Server({"distilled.zip": data}) as srv:
        code, out, err = _run(capsys, "checkpoints", "--root", str(root), "--which", "distilled",
                              "--url", srv.url("distilled.zip"), "--sha256", _sha(data))
        assert code == 0, err
        assert srv.requests == [("/distilled.zip", None)]
        assert (root / "distilled.zip").read_bytes() == data
        folder = root / exp
        assert f"experiment: {folder}" in out and _sha(data) in out
        assert not [p for p in _leftovers(root)
                    if p.endswith((fetch_module.STAGE_SUFFIX, fetch_module.UNPACK_SUFFIX))]
        loaded = build_model("vkd_mobilenetv2", 5, pretrained=False)
        load_weights(loaded, str(folder))
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        # again: the archive is verified and found unpacked, nothing is requested
        code, out, _ = _run(capsys, "checkpoints", "--root", str(root), "--which", "distilled",
                            "--url", srv.url("distilled.zip"))
        assert code == 0 and len(srv.requests) == 1 and "existing" in out


STAGE = "baseline.zip" + fetch_module.STAGE_SUFFIX


def _checkpoint_args(tmp_path, url, *more):
    return ["checkpoints", "--root", str(tmp_path), "--which", "baseline", "--url", url, *more]


def _partial(tmp_path):
    """The bytes gdown kept in the staging folder (its partial file, whatever its name)."""
    files = [p for p in (tmp_path / STAGE).iterdir() if p.name != "baseline.zip"]
    assert len(files) == 1, files
    return files[0].read_bytes()


def _break_off(tmp_path, capsys, data):
    """A first run whose transfer breaks off at half (no retry): the bytes it kept."""
    with Server({"b.zip": data}, mode="drop") as srv:
        code, _, err = _run(capsys, *_checkpoint_args(tmp_path, srv.url("b.zip"), "--retries",
                                                      "0"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert srv.url("b.zip") in err[0] and "resume" in err[0] and STAGE in err[0]
    kept = _partial(tmp_path)
    assert 0 < len(kept) <= len(data) // 2 and f"{len(kept)} bytes" in err[0]
    assert not (tmp_path / "baseline.zip").exists()
    assert not (tmp_path / "baseline_public").exists()
    return kept


def test_resume_from_the_bytes_an_earlier_run_kept(tmp_path, capsys):
    data = _archive()
    kept = _break_off(tmp_path, capsys, data)
    assert data.startswith(kept)
    with Server({"b.zip": data}) as srv:
        code, out, err = _run(capsys, *_checkpoint_args(tmp_path, srv.url("b.zip")))
        assert code == 0, err
        # gdown opens with a plain request (closed after its headers), then asks for the rest
        assert srv.requests[-1] == ("/b.zip", f"bytes={len(kept)}-")
        assert [r for _, r in srv.requests if r] == [f"bytes={len(kept)}-"]
    assert (tmp_path / "baseline.zip").read_bytes() == data
    assert not (tmp_path / STAGE).exists()
    assert "resumed" in out
    assert (tmp_path / "baseline_public/mars/base_mars_resnet50/params/hparams.json").is_file()


def test_complete_staged_file_is_verified_without_a_request(tmp_path, capsys):
    data = _archive()
    (tmp_path / STAGE).mkdir()
    (tmp_path / STAGE / "baseline.zip").write_bytes(data)  # killed before its checks
    with Server({"b.zip": data}) as srv:
        code, _, err = _run(capsys, *_checkpoint_args(tmp_path, srv.url("b.zip"), "--sha256",
                                                      _sha(data)))
        assert code == 0, err
        assert srv.requests == []
    assert (tmp_path / "baseline.zip").read_bytes() == data
    assert not (tmp_path / STAGE).exists()


def test_server_answering_200_to_range_restarts_from_zero(tmp_path, capsys):
    data = _archive()
    # bytes that are NOT the file's start: appending the 200 body to them would corrupt it
    kept = _break_off(tmp_path, capsys, b"\xff" * len(data))
    with Server({"b.zip": data}, mode="norange") as srv:
        code, out, err = _run(capsys, *_checkpoint_args(tmp_path, srv.url("b.zip"), "--sha256",
                                                        _sha(data)))
        assert code == 0, err
        assert ("/b.zip", f"bytes={len(kept)}-") in srv.requests
        assert srv.requests[-1] == ("/b.zip", None)  # the new start
    assert "starting again from zero" in out
    assert (tmp_path / "baseline.zip").read_bytes() == data


def test_dropped_connection_resumes_with_range(tmp_path, capsys):
    data = _archive()
    with Server({"b.zip": data}, mode="drop") as srv:
        code, out, err = _run(capsys, *_checkpoint_args(tmp_path, srv.url("b.zip"), "--sha256",
                                                        _sha(data)))
        assert code == 0, err
        assert srv.requests[0] == ("/b.zip", None)
        start = int(re.fullmatch(r"bytes=(\d+)-", srv.requests[-1][1]).group(1))
        assert 0 < start <= len(data) // 2
    assert (tmp_path / "baseline.zip").read_bytes() == data
    assert "retry 1 of 3" in out  # the run's log (stdout) says it resumed


def test_dropped_connection_without_retries_resumes_on_the_next_run(tmp_path, capsys):
    data = _archive()
    kept = _break_off(tmp_path, capsys, data)
    with Server({"b.zip": data}) as srv:
        code, _, err = _run(capsys, *_checkpoint_args(tmp_path, srv.url("b.zip"), "--retries",
                                                      "0"))
        assert code == 0, err
        assert srv.requests[-1] == ("/b.zip", f"bytes={len(kept)}-")
    assert (tmp_path / "baseline.zip").read_bytes() == data


def test_sha256_mismatch_deletes_and_does_not_unpack(tmp_path, capsys):
    data = _archive()
    with Server({"b.zip": data}) as srv:
        code, _, err = _run(capsys, "checkpoints", "--root", str(tmp_path), "--which",
                            "baseline", "--url", srv.url("b.zip"), "--sha256", "0" * 64)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "sha256 mismatch" in err[0]
    assert _sha(data) in err[0] and "deleted" in err[0]
    assert _leftovers(tmp_path) == []


def test_zip_with_a_bad_crc_is_refused(tmp_path, capsys):
    payload = b"reference weights " * 500
    data = bytearray(_zip({"baseline_public/exp/chk/chk_end": payload}, zipfile.ZIP_STORED))
    at = bytes(data).index(payload) + 100
    data[at] ^= 0xFF  # same length, same headers, wrong content
    with Server({"b.zip": bytes(data)}) as srv:
        code, _, err = _run(capsys, "checkpoints", "--root", str(tmp_path), "--which",
                            "baseline", "--url", srv.url("b.zip"))
    assert code == 2 and len(err) == 1
    assert "CRC" in err[0] and "chk_end" in err[0] and "nothing was unpacked" in err[0]
    assert _leftovers(tmp_path) == []


def test_not_a_zip_is_refused(tmp_path, capsys):
    with Server({"b.zip": b"PK\x03\x04 this is not really a zip" * 10}) as srv:
        code, _, err = _run(capsys, "checkpoints", "--root", str(tmp_path), "--which",
                            "baseline", "--url", srv.url("b.zip"))
    assert code == 2 and len(err) == 1 and "zip" in err[0]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_is_one_line_and_leaves_nothing_complete(tmp_path, capsys, status):
    with Server({}, mode="fail", status=status) as srv:
        url = srv.url("b.zip")
        code, _, err = _run(capsys, "checkpoints", "--root", str(tmp_path), "--which",
                            "baseline", "--url", url)
        assert len(srv.requests) == 1  # at once: no retry of an HTTP error
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert url in err[0] and f"HTTP {status}" in err[0]
    assert f"put it at {tmp_path / 'baseline.zip'}" in err[0]
    assert _leftovers(tmp_path) == []


def test_http_error_keeps_a_partial_download_only_as_part(tmp_path, capsys):
    kept = _break_off(tmp_path, capsys, _archive())
    with Server({}, mode="fail", status=404) as srv:
        code, _, err = _run(capsys, *_checkpoint_args(tmp_path, srv.url("b.zip")))
    assert code == 2 and len(err) == 1 and f"{len(kept)} bytes" in err[0] and "HTTP 404" in err[0]
    assert _partial(tmp_path) == kept
    assert [p.split(os.sep)[0] for p in _leftovers(tmp_path)] == [STAGE, STAGE]


def test_offline_fails_at_once(tmp_path, capsys):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: connection refused, as when offline
    url = f"http://127.0.0.1:{port}/b.zip"
    code, _, err = _run(capsys, "checkpoints", "--root", str(tmp_path), "--which", "baseline",
                        "--url", url)
    assert code == 2 and len(err) == 1 and url in err[0] and "browser" in err[0]
    assert _leftovers(tmp_path) == []


def test_web_page_instead_of_the_file_is_refused(tmp_path, capsys):
    with Server({"b.zip": b"unused"}, mode="html") as srv:
        code, _, err = _run(capsys, "checkpoints", "--root", str(tmp_path), "--which",
                            "baseline", "--url", srv.url("b.zip"))
    assert code == 2 and len(err) == 1 and "web page" in err[0]
    assert _leftovers(tmp_path) == []


def test_archive_put_by_hand_is_verified_and_unpacked_offline(tmp_path, capsys):
    data = _archive()
    (tmp_path / "baseline.zip").write_bytes(data)
    code, out, err = _run(capsys, "checkpoints", "--root", str(tmp_path), "--which", "baseline",
                          "--url", "http://127.0.0.1:9/never-contacted.zip")
    assert code == 0, err
    assert (tmp_path / "baseline_public/mars/base_mars_resnet50/chk/chk_end").is_file()
    # a wrong checksum on a file put by hand is reported and the file is kept
    shutil.rmtree(tmp_path / "baseline_public")
    code, _, err = _run(capsys, "checkpoints", "--root", str(tmp_path), "--which", "baseline",
                        "--sha256", "1" * 64)
    assert code == 2 and len(err) == 1 and "exists but is not right" in err[0]
    assert (tmp_path / "baseline.zip").is_file() and not (tmp_path / "baseline_public").exists()


@pytest.mark.parametrize("args", [["--which", "all", "--url", "https://example.org/x.zip"],
                                  ["--url", "https://example.org/x.zip"],
                                  ["--which", "all", "--sha256", "0" * 64],
                                  ["--which", "baseline", "--sha256", "abc"],
                                  ["--which", "baseline", "--url", "ftp://example.org/x.zip"]])
def test_bad_arguments_are_one_line(tmp_path, capsys, args):
    code, _, err = _run(capsys, "checkpoints", "--root", str(tmp_path), *args)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert _leftovers(tmp_path) == []


def test_drive_folder_is_listed_once_and_fetched_with_gdown(tmp_path, capsys, monkeypatch):
    import gdown

    baseline = _archive()
    distilled = _zip({"distilled_public/mars/exp/params/hparams.json": "{}"})
    calls = []

    def listing(**kwargs):
        calls.append(kwargs)
        return [DriveFile("IDB", "baseline.zip"), DriveFile("IDD", "distilled.zip")]

    monkeypatch.setattr(gdown, "download_folder", listing)
    with Server({"IDB": baseline, "IDD": distilled}) as srv:
        monkeypatch.setitem(dl.SOURCES, "gdrive_direct",
                            dataclasses.replace(dl.SOURCES["gdrive_direct"],
                                                url=srv.url("{id}")))
        code, out, err = _run(capsys, "checkpoints", "--root", str(tmp_path))
        assert code == 0, err
        assert sorted(p for p, _ in srv.requests) == ["/IDB", "/IDD"]
    assert [c["id"] for c in calls] == [dl.SOURCES["baseline"].drive_id]
    assert calls[0]["skip_download"] is True
    assert (tmp_path / "baseline_public").is_dir() and (tmp_path / "distilled_public").is_dir()
    assert f"experiment: {tmp_path / 'distilled_public/mars/exp'}" in out


def test_drive_folder_listing_failure_says_what_to_do(tmp_path, capsys, monkeypatch):
    import gdown

    def offline(**kwargs):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(gdown, "download_folder", offline)
    code, _, err = _run(capsys, "checkpoints", "--root", str(tmp_path), "--which", "baseline")
    assert code == 2 and len(err) == 1
    assert dl.SOURCES["baseline"].url in err[0] and str(tmp_path / "baseline.zip") in err[0]
    assert _leftovers(tmp_path) == []


def _on_drive(monkeypatch, fake):
    """``gdown.download`` answers Google Drive addresses with ``fake``; any other address (the
    loopback server) goes to the real gdown."""
    import gdown

    real = gdown.download

    def download(**kwargs):
        return (fake if "drive.google.com" in kwargs["url"] else real)(**kwargs)

    monkeypatch.setattr(gdown, "download", download)


def _zip_folder(folder):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        base = os.path.dirname(folder)
        for d, _, files in os.walk(folder):
            for f in sorted(files):
                path = os.path.join(d, f)
                zf.write(path, os.path.relpath(path, base))
    return buf.getvalue()


def test_mars_frames_through_gdown_and_info_through_loopback(tmp_path, capsys, monkeypatch,
                                                            mars_root):
    src = os.path.join(mars_root[0], "mars")
    zips = {"bbox_train.zip": _zip_folder(os.path.join(src, "bbox_train")),
            "bbox_test.zip": _zip_folder(os.path.join(src, "bbox_test"))}
    calls = []

    def fake_gdown(**kwargs):
        calls.append(kwargs)
        name = os.path.basename(kwargs["output"])
        with open(kwargs["output"], "wb") as fh:
            fh.write(zips[name])
        return kwargs["output"]

    _on_drive(monkeypatch, fake_gdown)
    for key in sources.MARS_FRAMES:  # the synthetic archives are not the real ones
        entry = dl.SOURCES[key]
        monkeypatch.setitem(dl.SOURCES, key, dataclasses.replace(
            entry, checksums=fetch_module.Checksums(
                md5=hashlib.md5(zips[entry.filename]).hexdigest())))
    info = {}
    for key in sources.MARS_INFO:
        with open(os.path.join(src, "info", dl.SOURCES[key].filename), "rb") as fh:
            info[dl.SOURCES[key].filename] = fh.read()
    root = tmp_path / "reid-data"
    with Server(info) as srv:
        for key in sources.MARS_INFO:
            entry = dl.SOURCES[key]
            data = info[entry.filename]
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            monkeypatch.setitem(dl.SOURCES, key, dataclasses.replace(
                entry, url=srv.url(entry.filename), checksums=fetch_module.Checksums(
                    sha256=_sha(data), git_sha1=blob)))
        code, out, err = _run(capsys, "mars", "--root", str(root))
        assert code == 0, err
        assert sorted(p for p, _ in srv.requests) == sorted("/" + n for n in info)
    assert [c["url"] for c in calls] == [f"https://drive.google.com/uc?id={dl.SOURCES[k].drive_id}"
                                         for k in sources.MARS_FRAMES]
    assert calls[0]["url"].endswith("=0B6tjyrV1YrHeY0hsVExLOTk3eVU")
    ours, theirs = Mars.parse(str(root / "mars")), Mars.parse(src)
    for split in ("train", "query", "gallery"):
        assert [(len(t[0]), t[1], t[2]) for t in getattr(ours, split)] == \
               [(len(t[0]), t[1], t[2]) for t in getattr(theirs, split)]
    assert "vkd-reid check-dataset --root " in out and "-s vkd_mars" in out


def test_mars_info_checksum_mismatch_stops_before_the_frames(tmp_path, capsys, monkeypatch):
    _on_drive(monkeypatch, lambda **kw: pytest.fail("Google Drive asked"))
    with Server({n: b"not the real file" for n in ("a",)}) as srv:
        for key in sources.MARS_INFO:
            monkeypatch.setitem(dl.SOURCES, key, dataclasses.replace(dl.SOURCES[key],
                                                                     url=srv.url("a")))
        code, _, err = _run(capsys, "mars", "--root", str(tmp_path))
    assert code == 2 and len(err) == 1 and "git_sha1 mismatch" in err[0]
    assert not (tmp_path / "mars" / "info" / "train_name.txt").exists()
    assert not [p for p in _leftovers(tmp_path) if os.path.isfile(tmp_path / p)]


def test_mars_gdown_failure_is_one_line(tmp_path, capsys, monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    _on_drive(monkeypatch, fail)
    for key in sources.MARS_INFO:  # info/ already there and right
        entry = dl.SOURCES[key]
        path = tmp_path / "mars" / "info" / entry.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry.filename.encode())
        monkeypatch.setitem(dl.SOURCES, key, dataclasses.replace(
            entry, checksums=fetch_module.Checksums(sha256=_sha(entry.filename.encode()))))
    code, _, err = _run(capsys, "mars", "--root", str(tmp_path))
    assert code == 2 and len(err) == 1
    assert dl.SOURCES["mars_bbox_train"].url in err[0] and "Too many users" in err[0]
    assert str(tmp_path / "mars" / "bbox_train.zip") in err[0]
    assert not (tmp_path / "mars" / "bbox_train.zip").exists()


def _tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_public_dataset_is_one_table_entry_and_a_tar_unpacks(tmp_path, capsys, monkeypatch):
    """How a dataset such as iLIDS-VID is added: its Source (a tar archive here) and a DATASETS
    entry make a ``download`` command that fetches, checks and unpacks it."""
    data = _tar({"toy-set/sequences/cam1/p001/f0001.png": b"frame" * 100,
                 "toy-set/splits.json": b"[]"})
    with Server({"toy.tar": data}) as srv:
        monkeypatch.setitem(dl.SOURCES, "toy", sources.Source(
            srv.url("toy.tar"), sources.HTTPS, "toy.tar",
            fetch_module.Checksums(sha256=_sha(data)), top=("toy-set",), origin="a test"))
        monkeypatch.setitem(dl.DATASETS, "toy", sources.Dataset(
            "toy", "vkd_toy", ("toy",), "a toy dataset"))
        code, out, err = _run(capsys, "toy", "--root", str(tmp_path))
        assert code == 0, err
        assert srv.requests == [("/toy.tar", None)]
        assert (tmp_path / "toy/toy-set/sequences/cam1/p001/f0001.png").read_bytes() == \
            b"frame" * 100
        assert f"toy: {tmp_path / 'toy' / 'toy-set'}" in out and "-s vkd_toy" in out
        # a truncated tar is refused and nothing is unpacked
        srv.files["toy.tar"] = data[:700]
        monkeypatch.setitem(dl.SOURCES, "toy", dataclasses.replace(
            dl.SOURCES["toy"], checksums=fetch_module.Checksums()))
        code, _, err = _run(capsys, "toy", "--root", str(tmp_path / "again"))
    assert code == 2 and len(err) == 1 and "tar archive" in err[0] and "deleted" in err[0]
    assert _leftovers(tmp_path / "again") == ["toy"]


@pytest.mark.parametrize("what,needles", [
    ("veri", ["https://vehiclereid.github.io/VeRi/", "VeRi/", "image_query/", "test_track.txt",
              "vkd_veri"]),
    ("atrw", ["https://cvwc2019.github.io/challenge.html", "https://lila.science/datasets/atrw",
              "gt_test_plain.json", "atrw_reid_train/train/", "vkd_atrw"]),
    ("duke", ["withdrawn", "2019", "DukeMTMC-VideoReID/", "gallery/<pid4>/", "vkd_duke"]),
])
def test_instructions_for_datasets_on_request(tmp_path, capsys, what, needles):
    code, out, err = _run(capsys, what, "--root", str(tmp_path))
    assert code == 0 and err == []
    for needle in needles:
        assert needle in out
    assert str(tmp_path) in out
    assert _leftovers(tmp_path) == []


def test_every_address_is_https():
    for key, src in dl.SOURCES.items():
        assert src.url.startswith("https://"), key
        assert src.origin, key
        if src.kind in (sources.GDRIVE_FILE, sources.GDRIVE_FOLDER):
            assert src.drive_id and src.drive_id in src.url, key


@pytest.mark.slow  # a subprocess that imports torch
def test_tool_wrapper_runs(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "download.py"), "duke",
                           "--root", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "withdrawn" in proc.stdout
