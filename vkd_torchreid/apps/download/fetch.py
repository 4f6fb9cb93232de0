"""Verified downloads through gdown, and atomic unpacking; see :mod:`vkd_torchreid.apps.download`.

gdown does every transfer, plain HTTP(S) and Google Drive alike (Drive's confirmation page and
cookies, a partial file that ``resume=True`` continues with a Range request, the byte count).
Kept here, each because gdown does not do it:

- a staging folder ``<file>.download``: gdown's partial-file names differ across versions;
- the retry loop: gdown's ``retries`` also retry before the first byte, so offline is not fast;
- a new start when the server ignores the Range: gdown >= 6.5 gives up and keeps the bytes;
- the checks (checksums, archive CRCs, no web page) before the file gets its final name;
- unpacking into a hidden folder renamed into place: ``gdown.extractall`` writes in place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import gdown
import requests

from vkd_torchreid.utils.logs import one_line
from vkd_torchreid.utils.progress import progress_enabled

logger = logging.getLogger(__name__)
STAGE_SUFFIX = ".download"
UNPACK_SUFFIX = ".unpacking"
CHUNK = 1 << 20
#: (connect, read) seconds for every HTTP request (passed to gdown where it takes a timeout).
TIMEOUT = (15.0, 60.0)
#: Retries of a transfer that broke off after some bytes (each resumes where it stopped).
RETRIES = 3
#: Seconds before retry k (times 2**k, at most 30 s).
RETRY_DELAY = 1.0
_WEB_PAGE = (b"<!doctype html", b"<html")


@dataclass(frozen=True)
class Checksums:
    """What a file's content must hash to (None: not known)."""

    sha256: Optional[str] = None
    md5: Optional[str] = None
    #: Git's blob id: sha1(b"blob <size>\\0" + content), what a repository's tree records.
    git_sha1: Optional[str] = None

    def known(self) -> Dict[str, str]:
        return {k: v.lower() for k, v in dataclasses.asdict(self).items() if v}


class DownloadError(Exception):
    """A download or unpack that did not succeed; the message is one line for the user."""


@dataclass(frozen=True)
class Fetched:
    """A file that is complete and verified at ``path``."""

    path: str
    size: int
    sha256: str
    #: ``downloaded``, ``resumed`` (from a partial download) or ``existing`` (already there).
    how: str


def digests(path: str, names: Sequence[str] = ("sha256",)) -> Dict[str, str]:
    """Hex digests of the file at ``path``: any of ``sha256``, ``md5``, ``git_sha1``."""
    size = os.path.getsize(path)
    hashers = {n: hashlib.sha1(f"blob {size}\0".encode()) if n == "git_sha1" else hashlib.new(n)
               for n in names}
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            for h in hashers.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashers.items()}


def _members(path: str, crc: bool = False) -> Tuple[List[str], Optional[str]]:
    """(member names, the first member whose CRC fails when ``crc``) of a zip or tar archive."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return zf.namelist(), zf.testzip() if crc else None
    with tarfile.open(path) as tf:
        return tf.getnames(), None


def check_archive(path: str) -> None:
    """Raises DownloadError unless ``path`` is a readable, non-empty zip (every member's CRC
    checked) or tar archive."""
    try:
        names, bad = _members(path, crc=True)
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError,
            NotImplementedError) as exc:
        raise DownloadError(f"not a readable zip or tar archive ({one_line(exc)})") from None
    if bad is not None:
        raise DownloadError(f"the zip archive is corrupt (CRC check failed for member {bad!r})")
    if not names:
        raise DownloadError("the archive is empty")


def verify(path: str, expected: Checksums, check: Optional[Callable[[str], None]]) -> str:
    """The file's sha256; DownloadError if it is a web page, a checksum differs or ``check``
    refuses it."""
    with open(path, "rb") as fh:
        if fh.read(512).lstrip().lower().startswith(_WEB_PAGE):
            raise DownloadError("the server answered with a web page, not the file (Google "
                                "Drive does this when its download quota is exceeded)")
    known = expected.known()
    found = digests(path, sorted({"sha256", *known}))
    for name, want in known.items():
        if found[name] != want:
            raise DownloadError(f"{name} mismatch (got {found[name]}, expected {want})")
    if check is not None:
        check(path)
    return found["sha256"]


def short_reason(exc: BaseException) -> str:
    """A short reason for a failed transfer (requests' own messages nest several errors)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason or ''}".strip()
    if isinstance(exc, requests.Timeout):
        return "timed out"
    match = re.search(r"\[Errno -?\d+\] [^'\")]*", str(exc))
    if isinstance(exc, requests.ConnectionError) and match:
        return "cannot connect (" + match.group(0).strip() + ")"
    return one_line(exc)


def _kept(stage: str, name: str) -> int:
    """Bytes of gdown's partial file(s) in ``stage`` (everything but the complete ``name``)."""
    if not os.path.isdir(stage):
        return 0
    return sum(os.path.getsize(os.path.join(stage, f)) for f in os.listdir(stage) if f != name)


def _lock(stage: str) -> Optional[int]:
    """An open descriptor holding an exclusive lock on ``stage`` (None where not POSIX)."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(stage, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DownloadError(f"{stage} is being written by another download") from None
    return fd


def _transfer(url: str, staged: str, retries: int, show: bool) -> None:
    """Downloads ``url`` to ``staged`` with gdown, resuming up to ``retries`` times after a
    break (gdown continues the partial file it left beside ``staged``)."""
    stage, name = os.path.split(staged)
    extra = {"timeout": TIMEOUT} if "timeout" in inspect.signature(gdown.download).parameters \
        else {}  # gdown < 6.5 takes no timeout
    attempt, restarted = 0, False
    while True:
        before = _kept(stage, name)
        try:
            if gdown.download(url=url, output=staged, quiet=not show, resume=True, **extra) \
                    and os.path.isfile(staged):
                return
            raise DownloadError("gdown returned no file")
        except Exception as exc:  # requests', gdown's and OSError: their kinds vary by version
            if "byte range" in str(exc) and before and not restarted:  # gdown >= 6.5's words
                logger.warning("%s: the server did not resume from byte %d; starting again "
                               "from zero", url, before)
                shutil.rmtree(stage)
                os.makedirs(stage)
                restarted = True
                continue
            if _kept(stage, name) <= before or attempt == retries:
                raise DownloadError(short_reason(exc)) from None
            delay = min(RETRY_DELAY * 2 ** attempt, 30.0)
            attempt += 1
            logger.warning("%s: %s; resuming from byte %d in %.0f s (retry %d of %d)", url,
                           short_reason(exc), _kept(stage, name), delay, attempt, retries)
            time.sleep(delay)


def _manual(url: str, dest: str, stage: str, page: Optional[str]) -> str:
    where = f"from {page}" if page and page != url else "from that address"
    text = (f"download {os.path.basename(dest)} {where} in a browser and put it at {dest}, "
            "then run this again")
    kept = _kept(stage, os.path.basename(dest))
    if kept:
        text += f" (or run this again to resume from the {kept} bytes kept in {stage})"
    return text


def fetch(url: str, dest: str, checksums: Optional[Checksums] = None,
          check: Optional[Callable[[str], None]] = None, retries: int = RETRIES,
          show: Optional[bool] = None, page: Optional[str] = None) -> Fetched:
    """Downloads ``url`` (HTTP(S) or Google Drive) to ``dest`` through ``dest + '.download'``.

    ``dest`` gets its name only once the file is not a web page, matches every known checksum
    and ``check`` (e.g. :func:`check_archive`) accepts it; a failed check deletes it. A ``dest``
    that exists is verified and kept. A transfer that breaks off after some bytes is resumed up
    to ``retries`` times; a failure before any byte (offline, an HTTP error) stops at once and
    keeps what an earlier run received for the next.

    Args:
        page: where a person can download the file by hand (named in the error).

    Raises:
        DownloadError: one line naming ``url``, the file, and where to put it by hand.
    """
    checksums = checksums or Checksums()
    if os.path.isfile(dest):
        try:
            sha = verify(dest, checksums, check)
        except DownloadError as exc:
            raise DownloadError(f"{dest} exists but is not right: {exc}; delete it and run "
                                "this again") from None
        logger.info("%s is already there (verified)", dest)
        return Fetched(dest, os.path.getsize(dest), sha, "existing")
    stage = dest + STAGE_SUFFIX
    staged = os.path.join(stage, os.path.basename(dest))
    os.makedirs(stage, exist_ok=True)
    resumed = os.path.isfile(staged) or _kept(stage, os.path.basename(dest)) > 0
    if resumed:
        logger.info("resuming %s from %s", url, stage)
    fd = _lock(stage)
    try:
        if not os.path.isfile(staged):  # else: complete, stopped before its checks
            _transfer(url, staged, retries, progress_enabled("auto") if show is None else show)
    except DownloadError as exc:
        if not os.listdir(stage):
            os.rmdir(stage)
        raise DownloadError(f"cannot download {url}: {exc}; {_manual(url, dest, stage, page)}"
                            ) from None
    finally:
        if fd is not None:
            os.close(fd)
    try:
        sha = verify(staged, checksums, check)
    except DownloadError as exc:
        shutil.rmtree(stage)
        raise DownloadError(f"{url}: {exc}; the download was deleted and nothing was "
                            "unpacked") from None
    os.replace(staged, dest)
    shutil.rmtree(stage)
    size = os.path.getsize(dest)
    logger.info("downloaded %s to %s (%d bytes)", url, dest, size)
    return Fetched(dest, size, sha, "resumed" if resumed else "downloaded")


def unpack(archive: str, into: str, expected: Sequence[str] = ()) -> List[str]:
    """Unpacks the zip or tar ``archive`` into ``into``; returns its top-level entries' paths.

    ``expected``: top-level folders the archive must hold (DownloadError naming the missing
    ones and the archive, before anything is unpacked).

    The archive is extracted (``gdown.extractall``) into a hidden temporary folder in ``into``
    and each top-level entry is then renamed into place, so a folder under its final name is
    always complete. When every top-level entry already exists nothing is done; when only
    some do, nothing is overwritten (DownloadError).
    """
    try:
        names = _members(archive)[0]
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise DownloadError(f"cannot read {archive}: {one_line(exc)}") from None
    firsts = {next((p for p in n.replace("\\", "/").split("/") if p not in ("", ".", "..")), "")
              for n in names}
    tops = sorted(firsts - {"", "__MACOSX"})
    if not tops:
        raise DownloadError(f"{archive} holds nothing to unpack")
    missing = [t for t in expected if t not in tops]
    if missing:
        raise DownloadError(f"{archive} holds {tops[:5]} but not {missing}: not the expected "
                            "archive; remove it and run this again")
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
        gdown.extractall(archive, tmp)
        for top, target in zip(tops, targets):
            os.rename(os.path.join(tmp, top), target)
            moved.append(target)
    except (OSError, ValueError, zipfile.BadZipFile, tarfile.TarError, zlib.error) as exc:
        for target in moved:
            shutil.rmtree(target, ignore_errors=True)
        raise DownloadError(f"cannot unpack {archive} into {into}: {one_line(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return targets
