"""``vkd-reid download``: the authors' released checkpoints and the public parts of the datasets.

    python tools/download.py checkpoints --root logs [--which baseline|distilled|all]
                                         [--url URL] [--sha256 HEX] [--remove-archive]
    python tools/download.py mars --root reid-data
    python tools/download.py veri|atrw|duke [--root reid-data]

``checkpoints`` fetches the reference implementation's Model Zoo archives (``baseline.zip``: the
teachers, ``distilled.zip``: the students; about 4.8 GB together) into ``--root`` and unpacks
them there; every experiment folder inside (``params/hparams.json`` + ``chk/``) is printed and is
what ``model.load_weights`` / ``vkd.teacher_checkpoint`` take as it is. ``mars`` fetches the
MARS frames from Google Drive (with gdown) and its evaluation metadata (``info/``) from the
public MARS-evaluation repository into ``--root/mars``. VeRi-776 and ATRW must be requested
from their authors and DukeMTMC was withdrawn: ``veri``, ``atrw`` and ``duke`` print where to get
them and the layout our loaders read.

Every URL is in :data:`SOURCES`. A download goes to ``<file>.part`` and is resumed from there
(an HTTP Range request) when run again; only a download whose length, checksums and zip CRCs
check out is renamed to its final name, so a file under its final name is always complete. An
archive is unpacked into a hidden temporary folder beside its destination and then renamed
into place. A file put at the final path by hand (after a browser download) is verified and
used as it is.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Callable, Dict, List, Optional, Sequence, Tuple

import requests
from tqdm import tqdm

from vkd_torchreid.data.atrw import ATRW
from vkd_torchreid.data.duke import DukeVideo
from vkd_torchreid.data.mars import Mars
from vkd_torchreid.data.veri import VeRi
from vkd_torchreid.models.reference import HPARAMS
from vkd_torchreid.utils.logs import one_line, setup_logging, teardown_logging
from vkd_torchreid.utils.progress import progress_enabled

logger = logging.getLogger(__name__)

EXIT_ERROR = 2
PART_SUFFIX = ".part"
UNPACK_SUFFIX = ".unpacking"
CHUNK = 1 << 20
#: (connect, read) seconds for every HTTP request.
TIMEOUT = (15.0, 60.0)
#: Retries of a transfer that broke off after some bytes (each resumes where it stopped).
RETRIES = 3
#: Seconds before retry k (times 2**k, at most 30 s).
RETRY_DELAY = 1.0

# Kinds of :class:`Source`.
HTTPS = "https"                 # a file fetched with requests
GDRIVE_FILE = "gdrive_file"     # a Google Drive file fetched with gdown (``drive_id``)
GDRIVE_FOLDER = "gdrive_folder"  # a file inside a Google Drive folder (``drive_id``, ``filename``)
TEMPLATE = "template"           # an address pattern
PAGE = "page"                   # a web page for a person to read


@dataclass(frozen=True)
class Checksums:
    """What a file's content must hash to (None: not known)."""

    sha256: Optional[str] = None
    md5: Optional[str] = None
    #: Git's blob id: sha1(b"blob <size>\\0" + content), what a repository's tree records.
    git_sha1: Optional[str] = None

    def known(self) -> Dict[str, str]:
        return {k: v.lower() for k, v in dataclasses.asdict(self).items() if v}


@dataclass(frozen=True)
class Source:
    """One entry of :data:`SOURCES`."""

    url: str
    kind: str = HTTPS
    filename: str = ""
    checksums: Checksums = Checksums()
    drive_id: str = ""
    #: The archive's top-level folders (lets a run after ``--remove-archive`` skip it).
    top: Tuple[str, ...] = ()
    #: Where the address comes from.
    origin: str = ""


_MARS_EVAL = "liangzheng06/MARS-evaluation"
# The commit the checksums were taken at (the repository's master; info/ last changed in
# 6477ae9). A commit address never changes content.
_MARS_EVAL_COMMIT = "3a91bbc762fad7629fecde8c53e170742d3700f9"
_MARS_RAW = f"https://raw.githubusercontent.com/{_MARS_EVAL}/{_MARS_EVAL_COMMIT}/info/"
_MARS_ORIGIN = (f"github.com/{_MARS_EVAL} tree info/ at {_MARS_EVAL_COMMIT[:7]} (sha256 of "
                "the .mat files computed from that commit; the .txt files' git blob ids from "
                "its tree)")
_VKD_MODEL_ZOO = "https://drive.google.com/drive/folders/1EiiV4Q02dP9ASE7-zvlZdIDin3Xf6qp2"
_VKD_ZOO_ORIGIN = ("github.com/aimagelab/VKD README, 'Model Zoo'. The README links only this "
                   "Google Drive folder (baseline.zip, distilled.zip); it gives no per-file "
                   "address and no checksum, so the file is found by listing the folder")

#: Every address this tool uses or prints, by key.
SOURCES: Dict[str, Source] = {
    # -- the authors' released checkpoints --------------------------------------------------
    "baseline": Source(_VKD_MODEL_ZOO, GDRIVE_FOLDER, "baseline.zip",
                       drive_id="1EiiV4Q02dP9ASE7-zvlZdIDin3Xf6qp2", top=("baseline_public",),
                       origin=_VKD_ZOO_ORIGIN),
    "distilled": Source(_VKD_MODEL_ZOO, GDRIVE_FOLDER, "distilled.zip",
                        drive_id="1EiiV4Q02dP9ASE7-zvlZdIDin3Xf6qp2", top=("distilled_public",),
                        origin=_VKD_ZOO_ORIGIN),
    # Google Drive's direct download of a file id (what gdown requests after the large-file
    # confirmation); answers with a web page when the quota is exceeded.
    "gdrive_direct": Source(
        "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t",
        TEMPLATE, origin="Google Drive's download endpoint, as used by gdown"),
    # -- MARS -------------------------------------------------------------------------------
    "mars_drive": Source("https://drive.google.com/drive/folders/0B6tjyrV1YrHeMVV2UFFXQld6X1E",
                         PAGE, origin="github.com/aimagelab/VKD README, 'Data preparation'"),
    "mars_bbox_train": Source(
        "https://drive.google.com/file/d/0B6tjyrV1YrHeY0hsVExLOTk3eVU/view", GDRIVE_FILE,
        "bbox_train.zip", Checksums(md5="f4a3c5967a1b440ccf770f388c609602"),
        drive_id="0B6tjyrV1YrHeY0hsVExLOTk3eVU", top=("bbox_train",),
        origin="open-reid's MARS dataset class (reid/datasets/mars.py, file id and md5)"),
    "mars_bbox_test": Source(
        "https://drive.google.com/file/d/0B6tjyrV1YrHeTEE2c2hFMTdpRFU/view", GDRIVE_FILE,
        "bbox_test.zip", Checksums(md5="950d3bfbd792103d12729ac4f57199cf"),
        drive_id="0B6tjyrV1YrHeTEE2c2hFMTdpRFU", top=("bbox_test",),
        origin="open-reid's MARS dataset class (reid/datasets/mars.py, file id and md5)"),
    "mars_info_train_name": Source(
        _MARS_RAW + "train_name.txt", HTTPS, "train_name.txt",
        Checksums(git_sha1="72c8a124c9a3113356f7eb4b54123c0205075205"), origin=_MARS_ORIGIN),
    "mars_info_test_name": Source(
        _MARS_RAW + "test_name.txt", HTTPS, "test_name.txt",
        Checksums(git_sha1="cf85618306ef6902dca900a18f91532e44f4dad4"), origin=_MARS_ORIGIN),
    "mars_info_tracks_train": Source(
        _MARS_RAW + "tracks_train_info.mat", HTTPS, "tracks_train_info.mat",
        Checksums(sha256="bae1ca16a6afbad1db664fbd4a60f8761585d7fb591c5e20b714f637dba3636b"),
        origin=_MARS_ORIGIN),
    "mars_info_tracks_test": Source(
        _MARS_RAW + "tracks_test_info.mat", HTTPS, "tracks_test_info.mat",
        Checksums(sha256="35a5464d1219cc42001ddb6cdb2c1e88ae2bc9d516e559d44a68310521386b56"),
        origin=_MARS_ORIGIN),
    "mars_info_query_idx": Source(
        _MARS_RAW + "query_IDX.mat", HTTPS, "query_IDX.mat",
        Checksums(sha256="2b580c94cf7934dbe3320c628b915dba76153c60effa94c1f48995ae8b96a932"),
        origin=_MARS_ORIGIN),
    # -- datasets given out on request -------------------------------------------------------
    "veri": Source("https://vehiclereid.github.io/VeRi/", PAGE,
                   origin="the VeRi-776 project page of its authors"),
    "atrw_cvwc": Source("https://cvwc2019.github.io/challenge.html", PAGE,
                        origin="the ATRW paper (arXiv 1906.05586): the CVWC 2019 challenge page"),
    "atrw_lila": Source("https://lila.science/datasets/atrw", PAGE,
                        origin="LILA BC, which hosts the ATRW archives"),
    "atrw_eval": Source("https://github.com/cvwc2019/ATRWEvalScript", PAGE,
                        origin="the organisers' evaluation script: annotations/gt_test_plain.json"),
}

CHECKPOINTS = ("baseline", "distilled")
MARS_INFO = ("mars_info_train_name", "mars_info_test_name", "mars_info_tracks_train",
             "mars_info_tracks_test", "mars_info_query_idx")
MARS_FRAMES = ("mars_bbox_train", "mars_bbox_test")


class DownloadError(Exception):
    """A download or unpack that did not succeed; the message is one line for the user."""


class _BadDataError(DownloadError):
    """The bytes received cannot be the file (sizes disagree): the partial file is deleted."""


class _InterruptedError(Exception):
    """A transfer that stopped early; ``received`` bytes of it were written."""

    def __init__(self, received: int, reason: str) -> None:
        super().__init__(reason)
        self.received = received


@dataclass(frozen=True)
class Fetched:
    """A file that is complete and verified at ``path``."""

    path: str
    size: int
    sha256: str
    #: ``downloaded``, ``resumed`` (from a ``.part``) or ``existing`` (already there).
    how: str


def _manual(dest: str) -> str:
    part = dest + PART_SUFFIX
    text = f"download it in a browser and put it at {dest}, then run this again"
    if os.path.isfile(part) and os.path.getsize(part) > 0:
        text += (f" (or run this again to resume from the {os.path.getsize(part)} bytes kept "
                 f"in {part})")
    return text


def _reason(exc: BaseException) -> str:
    """A short reason for a requests error (the full one nests several exceptions)."""
    text = str(exc)
    if isinstance(exc, requests.Timeout):
        return "timed out"
    match = re.search(r"\[Errno -?\d+\] [^'\")]*", text)
    if match:
        return "cannot connect (" + match.group(0).strip() + ")"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect (no network?)"
    return one_line(exc)


def digests(path: str, names: Sequence[str] = ("sha256",)) -> Dict[str, str]:
    """Hex digests of the file at ``path``: any of ``sha256``, ``md5``, ``git_sha1``."""
    size = os.path.getsize(path)
    hashers = {}
    for name in names:
        if name == "git_sha1":
            hashers[name] = hashlib.sha1(f"blob {size}\0".encode())
        else:
            hashers[name] = hashlib.new(name)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            for h in hashers.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashers.items()}


def check_zip(path: str) -> None:
    """Raises DownloadError unless ``path`` is a zip archive whose members' CRCs all match."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if not zf.namelist():
                raise DownloadError("the zip archive is empty")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise DownloadError(f"not a readable zip archive ({one_line(exc)})") from None
    if bad is not None:
        raise DownloadError(f"the zip archive is corrupt (CRC check failed for member {bad!r})")


def _verify(path: str, expected: Checksums, check: Optional[Callable[[str], None]]) -> str:
    """The file's sha256 after checking it against ``expected`` and ``check``.

    Raises:
        DownloadError: a checksum differs or ``check`` refuses the file.
    """
    known = expected.known()
    found = digests(path, sorted({"sha256", *known}))
    for name, want in known.items():
        if found[name] != want:
            raise DownloadError(f"{name} mismatch (got {found[name]}, expected {want})")
    if check is not None:
        check(path)
    return found["sha256"]


def _lock(fh: IO[bytes], part: str) -> None:
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise DownloadError(f"{part} is being written by another download; wait for it to "
                            "finish") from None


_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")


def _content_range(value: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """(first byte, total size) of a ``Content-Range`` header (None where absent)."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if match is None:
        total = re.match(r"^bytes\s+\*/(\d+)$", (value or "").strip())
        return None, int(total.group(1)) if total else None
    return int(match.group(1)), None if match.group(3) == "*" else int(match.group(3))


def _request(session: requests.Session, url: str, fh: IO[bytes], show: bool,
             label: str) -> Tuple[int, Optional[int], int]:
    """One GET of ``url`` appended to ``fh`` (resumed from its size with a Range request).

    Returns:
        (size of the file, total announced by the server or None, bytes it started from).

    Raises:
        _InterruptedError: the transfer stopped early (retry when bytes were received).
        DownloadError: an HTTP error, a web page instead of the file, or sizes that disagree.
    """
    have = fh.seek(0, os.SEEK_END)
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise _InterruptedError(0, _reason(exc)) from None
    with resp:
        status = resp.status_code
        if status == 416 and have:  # nothing left after `have`: complete, or a different file
            _, total = _content_range(resp.headers.get("Content-Range"))
            if total == have:
                return have, total, have
            logger.warning("%s: the server has no bytes after the %d of %s; starting again "
                           "from zero", url, have, label)
            fh.seek(0)
            fh.truncate()
            return _request(session, url, fh, show, label)
        if status >= 400:
            raise DownloadError(f"HTTP {status} {resp.reason or ''}".strip())
        if resp.headers.get("Content-Type", "").lower().startswith("text/html"):
            raise DownloadError("the server answered with a web page, not the file (Google "
                                "Drive does this when its download quota is exceeded)")
        total: Optional[int] = None
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have and not have:
                raise DownloadError(f"the server sent a range (Content-Range "
                                    f"{resp.headers.get('Content-Range')!r}) that was not "
                                    "asked for")
            if start != have:
                logger.warning("%s: asked for bytes from %d, got a range from %s; starting "
                               "again from zero", url, have, start)
                resp.close()
                fh.seek(0)
                fh.truncate()
                return _request(session, url, fh, show, label)
        elif status == 200:
            if have:
                logger.warning("%s: the server does not resume (answered 200 to a Range "
                               "request); starting again from zero", url)
                fh.seek(0)
                fh.truncate()
                have = 0
        else:
            raise DownloadError(f"unexpected HTTP {status} {resp.reason or ''}".strip())
        length = resp.headers.get("Content-Length")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        expected = int(length) if length and length.isdigit() and not encoded else None
        if total is None and status == 200 and expected is not None:
            total = expected
        if hasattr(resp.raw, "enforce_content_length"):
            # urllib3 drops the bytes of a read cut short when it enforces the length itself;
            # keep them (they are resumed from) and check the length below instead.
            resp.raw.enforce_content_length = False
        received = 0
        with tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=label, disable=not show, leave=False) as bar:
            try:
                for chunk in resp.iter_content(CHUNK):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as exc:
                fh.flush()
                lost = "timed out" if isinstance(exc, requests.Timeout) else "connection lost"
                raise _InterruptedError(received, f"{lost} after {have + received} bytes"
                                        ) from None
        fh.flush()
        if expected is not None and received < expected:
            raise _InterruptedError(received, f"the connection was closed after {received} of "
                                         f"{expected} bytes")
        if expected is not None and received > expected:
            raise _BadDataError(f"the server sent {received} bytes, announced {expected}")
    size = have + received
    if total is not None and size != total:
        raise _BadDataError(f"got {size} bytes, the server announced {total}")
    return size, total, have


def fetch(url: str, dest: str, checksums: Optional[Checksums] = None,
          check: Optional[Callable[[str], None]] = None, retries: int = RETRIES,
          show: Optional[bool] = None, session: Optional[requests.Session] = None) -> Fetched:
    """Downloads ``url`` to ``dest`` through ``dest + '.part'``, resuming that file if present.

    The download is renamed to ``dest`` only when its size matches what the server announced
    (``Content-Length``, or the total of ``Content-Range``), it matches every known checksum
    and ``check`` (e.g. :func:`check_zip`) accepts it. A ``dest`` that already exists is
    verified and kept, never downloaded again.

    A transfer that breaks off after some bytes is resumed up to ``retries`` times. A failure
    before any byte (no network, an HTTP error) stops at once and keeps the ``.part`` for a
    later resume; a checksum or ``check`` failure deletes the download.

    Raises:
        DownloadError: one line naming ``url`` and what to do by hand.
    """
    label = os.path.basename(dest)
    checksums = checksums or Checksums()
    if os.path.isfile(dest):
        try:
            sha = _verify(dest, checksums, check)
        except DownloadError as exc:
            raise DownloadError(f"{dest} exists but is not right: {exc}; delete it and run "
                                "this again") from None
        logger.info("%s is already there (verified)", dest)
        return Fetched(dest, os.path.getsize(dest), sha, "existing")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + PART_SUFFIX
    show = progress_enabled("auto") if show is None else show
    own_session = session is None
    session = session or requests.Session()
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as fh:
            _lock(fh, part)
            size, start = _transfer(session, url, fh, retries, show, label)
            os.fsync(fh.fileno())
    except DownloadError as exc:
        if isinstance(exc, _BadDataError):
            os.remove(part)
        _drop_empty(part)
        raise DownloadError(f"cannot download {url}: {exc}; {_manual(dest)}") from None
    finally:
        if own_session:
            session.close()
    try:
        sha = _verify(part, checksums, check)
    except DownloadError as exc:
        os.remove(part)
        raise DownloadError(f"{url}: {exc}; the download was deleted and nothing was "
                            "unpacked") from None
    os.replace(part, dest)
    logger.info("downloaded %s to %s (%d bytes)", url, dest, size)
    return Fetched(dest, size, sha, "resumed" if start else "downloaded")


def _drop_empty(part: str) -> None:
    if os.path.isfile(part) and os.path.getsize(part) == 0:
        os.remove(part)


def _transfer(session: requests.Session, url: str, fh: IO[bytes], retries: int, show: bool,
              label: str) -> Tuple[int, int]:
    """(final size, the byte the first request started from) after up to ``retries`` resumes."""
    first = fh.seek(0, os.SEEK_END)
    if first:
        logger.info("resuming %s from byte %d", label, first)
    for attempt in range(retries + 1):
        try:
            size, _, _ = _request(session, url, fh, show, label)
            return size, first
        except _InterruptedError as exc:
            if exc.received == 0 or attempt == retries:
                raise DownloadError(str(exc)) from None
            delay = min(RETRY_DELAY * 2 ** attempt, 30.0)
            logger.warning("%s: %s; resuming from byte %d in %.0f s (retry %d of %d)",
                           url, exc, fh.tell(), delay, attempt + 1, retries)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _top(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return parts[0] if parts else ""


def unpack(archive: str, into: str) -> List[str]:
    """Unpacks the zip ``archive`` into ``into``; returns the paths of its top-level entries.

    The archive is extracted into a hidden temporary folder in ``into`` and each top-level
    entry is then renamed into place, so a folder under its final name is always complete.
    When every top-level entry already exists nothing is done; when only some do, nothing is
    overwritten (DownloadError).
    """
    with zipfile.ZipFile(archive) as zf:
        tops = sorted({_top(n) for n in zf.namelist()} - {"", "__MACOSX"})
    if not tops:
        raise DownloadError(f"{archive} holds nothing to unpack")
    targets = [os.path.join(into, t) for t in tops]
    present = [t for t in targets if os.path.lexists(t)]
    if len(present) == len(targets):
        logger.info("%s is already unpacked in %s", os.path.basename(archive), into)
        return targets
    if present:
        raise DownloadError(f"{present[0]} already exists and {archive} holds it too; move it "
                            "away and run this again")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(archive)}.", suffix=UNPACK_SUFFIX,
                           dir=into)
    moved: List[str] = []
    try:
        logger.info("unpacking %s into %s", archive, into)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        for top, target in zip(tops, targets):
            os.rename(os.path.join(tmp, top), target)
            moved.append(target)
    except (OSError, zipfile.BadZipFile, zlib.error) as exc:
        for target in moved:
            shutil.rmtree(target, ignore_errors=True)
        raise DownloadError(f"cannot unpack {archive} into {into}: {one_line(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return targets


def find_experiments(paths: Sequence[str]) -> List[str]:
    """Reference experiment folders (holding ``params/hparams.json``) under ``paths``."""
    found = []
    for path in paths:
        for folder, dirs, _ in os.walk(path):
            if os.path.isfile(os.path.join(folder, HPARAMS)):
                found.append(folder)
                dirs[:] = []
            dirs.sort()
    return sorted(found)


def _drive_listing(folder_id: str) -> Dict[str, str]:
    """File name -> Google Drive file id of the files in a shared folder (gdown's listing)."""
    import gdown

    files = gdown.download_folder(id=folder_id, skip_download=True, quiet=True)
    return {os.path.basename(str(f.path)): str(f.id) for f in files or []}


def checkpoint_url(name: str, dest: str, listing: Dict[str, Dict[str, str]]) -> str:
    """The direct address of the checkpoint archive ``name`` (lists its Drive folder once)."""
    src = SOURCES[name]
    if src.kind != GDRIVE_FOLDER:
        return src.url
    if src.drive_id not in listing:
        try:
            listing[src.drive_id] = _drive_listing(src.drive_id)
        except Exception as exc:  # gdown raises its own errors, requests', ValueError...
            raise DownloadError(f"cannot list the Google Drive folder {src.url} "
                                f"({one_line(exc)}); open it in a browser, download "
                                f"{src.filename} and put it at {dest}, then run this "
                                "again") from None
    files = listing[src.drive_id]
    if src.filename not in files:
        raise DownloadError(f"{src.filename} is not in the Google Drive folder {src.url} "
                            f"(it holds {sorted(files)[:10]}); download it by hand and put it "
                            f"at {dest}")
    return SOURCES["gdrive_direct"].url.format(id=files[src.filename])


def download_checkpoints(root: str, names: Sequence[str], url: Optional[str] = None,
                         sha256: Optional[str] = None, retries: int = RETRIES,
                         remove_archive: bool = False
                         ) -> List[Tuple[str, Optional[Fetched], List[str]]]:
    """Fetches, verifies and unpacks the checkpoint archives ``names`` into ``root``.

    Args:
        url, sha256: the address and checksum of the one archive asked for (a mirror).

    Returns:
        (name, the archive or None if it was unpacked before, unpacked top-level paths) each.
    """
    if (url or sha256) and len(names) != 1:
        raise DownloadError("--url and --sha256 apply to one archive: choose it with --which "
                            f"({' or '.join(CHECKPOINTS)})")
    os.makedirs(root, exist_ok=True)
    listing: Dict[str, Dict[str, str]] = {}
    results = []
    for name in names:
        src = SOURCES[name]
        dest = os.path.join(root, src.filename)
        tops = [os.path.join(root, t) for t in src.top]
        if not url and tops and all(map(os.path.isdir, tops)):  # unpacking is atomic
            logger.info("%s: %s already unpacked; nothing to do", name, ", ".join(tops))
            results.append((name, None, tops))
            continue
        checks = dataclasses.replace(src.checksums, sha256=sha256) if sha256 else src.checksums
        address = url
        if address is None and not os.path.isfile(dest):
            address = checkpoint_url(name, dest, listing)
        fetched = fetch(address or src.url, dest, checks, check=check_zip, retries=retries)
        unpacked = unpack(dest, root)
        if remove_archive:
            os.remove(dest)
        results.append((name, fetched, unpacked))
    return results


def _gdown_file(src: Source, dest: str) -> None:
    """Downloads a Google Drive file with gdown to ``dest`` (gdown keeps its own partial file
    and renames it to ``dest`` only when complete)."""
    try:
        import gdown

        result = gdown.download(id=src.drive_id, output=dest, quiet=not progress_enabled("auto"),
                                resume=True)
    except Exception as exc:  # gdown's errors differ across versions
        result, reason = None, one_line(exc)
    else:
        reason = "gdown returned no file"
    if not result or not os.path.isfile(dest):
        raise DownloadError(f"cannot download {src.url} with gdown ({reason}); download "
                            f"{src.filename} in a browser (folder "
                            f"{SOURCES['mars_drive'].url}) and put it at {dest}, then run "
                            "this again")


def download_mars(root: str, retries: int = RETRIES) -> Dict[str, List[str]]:
    """MARS under ``root/mars``: ``info/`` (HTTPS, verified), then the frames (gdown).

    Returns:
        ``info``: the metadata files; ``frames``: the unpacked frame folders.
    """
    base = os.path.join(root, Mars.dataset_dir)
    info_dir = os.path.join(base, "info")
    info = []
    with requests.Session() as session:
        for key in MARS_INFO:
            src = SOURCES[key]
            info.append(fetch(src.url, os.path.join(info_dir, src.filename), src.checksums,
                              retries=retries, session=session).path)
    frames = []
    for key in MARS_FRAMES:
        src = SOURCES[key]
        targets = [os.path.join(base, t) for t in src.top]
        dest = os.path.join(base, src.filename)
        if targets and all(map(os.path.isdir, targets)):  # unpacking is atomic: complete
            logger.info("%s already there; not downloaded", ", ".join(targets))
            frames.extend(targets)
            continue
        if not os.path.isfile(dest):
            _gdown_file(src, dest)
            try:
                _verify(dest, src.checksums, check_zip)
            except DownloadError as exc:
                os.remove(dest)
                raise DownloadError(f"{src.url}: {exc}; the download was deleted and nothing "
                                    "was unpacked") from None
        else:
            try:
                _verify(dest, src.checksums, check_zip)
            except DownloadError as exc:
                raise DownloadError(f"{dest} exists but is not right: {exc}; delete it and "
                                    "run this again") from None
        frames.extend(unpack(dest, base))
    return {"info": info, "frames": frames}


def _layout(layout: str, root: Optional[str]) -> str:
    prefix = (root or "<root>").rstrip("/\\") + "/"
    lines = layout.splitlines()
    return "\n".join(["  " + prefix + lines[0]] + ["  " + " " * len(prefix) + line
                                                   for line in lines[1:]])


def instructions(what: str, root: Optional[str] = None) -> str:
    """What to print for ``veri``, ``atrw`` and ``duke``."""
    shown = root or "<root>"
    if what == "veri":
        text = [
            "VeRi-776 is not downloadable here: its authors give it out on request.",
            f"Request it from the project page: {SOURCES['veri'].url}",
            "Unpack it (rename the folder to VeRi if it is named otherwise) so that this "
            "layout exists (dataset vkd_veri):",
            _layout(VeRi.LAYOUT, root),
        ]
        name = "vkd_veri"
    elif what == "atrw":
        text = [
            "ATRW (Amur tiger re-identification) is distributed by the CVWC 2019 organisers; "
            "this tool does not download it.",
            f"Get the re-ID archives (atrw_reid_train, atrw_anno_reid_train, atrw_reid_test, "
            f"atrw_anno_reid_test) from {SOURCES['atrw_cvwc'].url} or "
            f"{SOURCES['atrw_lila'].url},",
            f"and the plain re-ID test ground truth annotations/gt_test_plain.json from "
            f"{SOURCES['atrw_eval'].url}.",
            "Lay them out as (dataset vkd_atrw):",
            _layout(ATRW.LAYOUT, root),
        ]
        name = "vkd_atrw"
    elif what == "duke":
        text = [
            "DukeMTMC, and with it DukeMTMC-VideoReID, was withdrawn by its authors (Duke "
            "University) in 2019 and is no longer distributed; this tool does not point to "
            "copies.",
            "If you hold a copy obtained under its original terms, lay it out as "
            "(dataset vkd_duke):",
            _layout(DukeVideo.LAYOUT, root),
        ]
        name = "vkd_duke"
    else:
        raise ValueError(f"no instructions for {what!r}")
    text.append(f"Then check it: python tools/check_dataset.py --dataset {name} --root {shown}")
    return "\n".join(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="download", description=__doc__.splitlines()[0].split(": ", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    ck = sub.add_parser("checkpoints", help="the authors' released checkpoints (Model Zoo)")
    ck.add_argument("--root", required=True,
                    help="folder for the archives and the unpacked experiment folders")
    ck.add_argument("--which", choices=(*CHECKPOINTS, "all"), default="all",
                    help="baseline (teachers), distilled (students) or all (default)")
    ck.add_argument("--url", help="address of the one archive asked for (a mirror)")
    ck.add_argument("--sha256", help="expected SHA-256 of the one archive asked for")
    ck.add_argument("--retries", type=int, default=RETRIES,
                    help=f"resumes of a transfer that breaks off (default {RETRIES})")
    ck.add_argument("--remove-archive", action="store_true",
                    help="delete each archive once it is unpacked")
    mars = sub.add_parser("mars", help="MARS frames (Google Drive) and info/ metadata")
    mars.add_argument("--root", required=True, help="data root; MARS goes to ROOT/mars")
    mars.add_argument("--retries", type=int, default=RETRIES,
                      help=f"resumes of a transfer that breaks off (default {RETRIES})")
    for what, text in (("veri", "where to request VeRi-776, and its layout"),
                       ("atrw", "where to get ATRW, and its layout"),
                       ("duke", "DukeMTMC-VideoReID's status, and its layout")):
        sub.add_parser(what, help=text).add_argument("--root", help="data root (for the paths)")
    return parser


def _valid_hex(value: Optional[str], length: int, flag: str) -> Optional[str]:
    if value is None:
        return None
    if not re.fullmatch(rf"[0-9a-fA-F]{{{length}}}", value):
        raise DownloadError(f"{flag} {value!r}: expected {length} hexadecimal digits")
    return value.lower()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code (2 and one ``error:`` line on failure)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.what in ("veri", "atrw", "duke"):
        print(instructions(args.what, args.root))
        return 0
    setup_logging()
    try:
        if getattr(args, "retries", 0) < 0:
            raise DownloadError("--retries must be >= 0")
        if args.what == "checkpoints":
            sha = _valid_hex(args.sha256, 64, "--sha256")
            if args.url and not re.match(r"^https?://", args.url):
                raise DownloadError(f"--url {args.url!r}: expected an http:// or https:// "
                                    "address")
            names = CHECKPOINTS if args.which == "all" else (args.which,)
            results = download_checkpoints(args.root, names, args.url, sha, args.retries,
                                           args.remove_archive)
            for name, fetched, unpacked in results:
                if fetched is None:
                    print(f"{name}: already unpacked")
                else:
                    print(f"{name}: {fetched.path} ({fetched.size} bytes, {fetched.how}, "
                          f"sha256 {fetched.sha256})")
                for path in unpacked:
                    print(f"  unpacked: {path}")
                for folder in find_experiments(unpacked):
                    print(f"  experiment: {folder}")
            print("evaluate an experiment with: python tools/main.py --config-file CONFIG "
                  "--root DATA_ROOT --eval-only model.load_weights EXPERIMENT_FOLDER")
        else:
            out = download_mars(args.root, args.retries)
            for path in out["info"] + out["frames"]:
                print(f"mars: {path}")
            print(f"check it with: python tools/check_dataset.py --dataset vkd_mars "
                  f"--root {args.root}")
        return 0
    except (DownloadError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        teardown_logging()


if __name__ == "__main__":
    raise SystemExit(main())
