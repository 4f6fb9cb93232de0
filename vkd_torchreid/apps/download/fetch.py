"""HTTP downloads that resume (a ``.part`` file and Range requests), verify (length, checksums,
zip CRCs) and unpack atomically; see :mod:`vkd_torchreid.apps.download`."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Callable, Dict, List, Optional, Sequence, Tuple

import requests
from tqdm import tqdm

from vkd_torchreid.utils.logs import one_line
from vkd_torchreid.utils.progress import progress_enabled

logger = logging.getLogger(__name__)
PART_SUFFIX = ".part"
UNPACK_SUFFIX = ".unpacking"
CHUNK = 1 << 20
#: (connect, read) seconds for every HTTP request.
TIMEOUT = (15.0, 60.0)
#: Retries of a transfer that broke off after some bytes (each resumes where it stopped).
RETRIES = 3
#: Seconds before retry k (times 2**k, at most 30 s).
RETRY_DELAY = 1.0


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


def verify(path: str, expected: Checksums, check: Optional[Callable[[str], None]]) -> str:
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
            sha = verify(dest, checksums, check)
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
        sha = verify(part, checksums, check)
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
