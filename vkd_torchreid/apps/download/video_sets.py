"""iLIDS-VID: a public tar archive, fetched and laid out (PRID2011 has no public archive:
``download prid2011`` prints where to get it).

iLIDS-VID's archive (the address of torchreid's ``iLIDSVID.dataset_url``) holds
``i-LIDS-VID/`` and ``train-test people splits/``, which go under ``<root>/ilids-vid`` as
torchreid lays them out. The transfer is :func:`~.fetch.fetch`'s (resumed ``.part`` file,
a file put at the final path by hand is verified and used); the archive is checked as a tar
holding both folders and no path outside them, and unpacked into a hidden temporary folder
whose entries are then renamed into place, so a folder under its final name is complete.
"""
from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
from typing import List

from vkd_torchreid.apps.download.fetch import RETRIES, UNPACK_SUFFIX, DownloadError, fetch
from vkd_torchreid.apps.download.sources import SOURCES
from vkd_torchreid.data.ilidsvid import ILIDSVID
from vkd_torchreid.utils.logs import one_line

logger = logging.getLogger(__name__)

#: The top-level folders of iLIDS-VID's archive, as torchreid expects them in ``ilids-vid/``.
ILIDS_TOPS = ("i-LIDS-VID", "train-test people splits")


def _members(path: str) -> List[tarfile.TarInfo]:
    try:
        with tarfile.open(path) as tf:
            return tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadError(f"not a readable tar archive ({one_line(exc)})") from None


def check_ilids_tar(path: str) -> None:
    """Raises DownloadError unless ``path`` is a tar holding :data:`ILIDS_TOPS` only."""
    tops = set()
    for member in _members(path):
        parts = [p for p in member.name.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or member.name.startswith("/") or ".." in parts or not (
                member.isfile() or member.isdir()):
            raise DownloadError(f"the archive holds {member.name!r}, not a plain file or "
                                "folder inside it")
        tops.add(parts[0])
    if not set(ILIDS_TOPS) <= tops:
        raise DownloadError(f"the archive holds {sorted(tops)[:5]}, expected the folders "
                            f"{list(ILIDS_TOPS)}")


def unpack_tar(archive: str, into: str, tops: tuple) -> List[str]:
    """Unpacks ``tops`` of the tar ``archive`` into ``into`` (atomic per top-level folder)."""
    targets = [os.path.join(into, t) for t in tops]
    present = [t for t in targets if os.path.lexists(t)]
    if len(present) == len(targets):
        return targets
    if present:
        raise DownloadError(f"{present[0]} already exists and {archive} holds it too; move it "
                            "away and run this again")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(archive)}.", suffix=UNPACK_SUFFIX,
                           dir=into)
    moved: List[str] = []
    try:
        logger.info("unpacking %s into %s", archive, into)
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, members=[m for m in tf.getmembers()
                                        if m.name.split("/")[0] in tops], filter="data")
        for top, target in zip(tops, targets):
            os.rename(os.path.join(tmp, top), target)
            moved.append(target)
    except (OSError, tarfile.TarError) as exc:
        for target in moved:
            shutil.rmtree(target, ignore_errors=True)
        raise DownloadError(f"cannot unpack {archive} into {into}: {one_line(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return targets


def download_ilidsvid(root: str, retries: int = RETRIES,
                      remove_archive: bool = False) -> List[str]:
    """iLIDS-VID under ``root/ilids-vid``, checked by parsing split 0; returns its folders."""
    src = SOURCES["ilidsvid"]
    base = os.path.join(root, ILIDSVID.dataset_dir)
    targets = [os.path.join(base, t) for t in ILIDS_TOPS]
    if all(map(os.path.isdir, targets)):  # unpacking is atomic: complete
        logger.info("%s already there; not downloaded", ", ".join(targets))
    else:
        dest = os.path.join(base, src.filename)
        fetch(src.url, dest, src.checksums, check=check_ilids_tar, retries=retries)
        unpack_tar(dest, base, ILIDS_TOPS)
        if remove_archive:
            os.remove(dest)
    try:
        ILIDSVID.load(root, split_id=0)
    except (FileNotFoundError, ValueError) as exc:
        raise DownloadError(f"{base} does not read as iLIDS-VID: {one_line(exc)}") from None
    return targets
