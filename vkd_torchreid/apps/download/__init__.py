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
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import requests

from vkd_torchreid.apps.common import EXIT_ERROR
from vkd_torchreid.apps.download import fetch as fetch_module  # noqa: F401  (tests patch it)
from vkd_torchreid.apps.download.fetch import (  # noqa: F401  (the package's API)
    PART_SUFFIX,
    RETRIES,
    UNPACK_SUFFIX,
    Checksums,
    DownloadError,
    Fetched,
    check_zip,
    digests,
    fetch,
    unpack,
    verify,
)
from vkd_torchreid.apps.download.sources import (  # noqa: F401
    CHECKPOINTS,
    GDRIVE_FILE,
    GDRIVE_FOLDER,
    HTTPS,
    MARS_FRAMES,
    MARS_INFO,
    PAGE,
    SOURCES,
    TEMPLATE,
    Source,
)
from vkd_torchreid.data.atrw import ATRW
from vkd_torchreid.data.duke import DukeVideo
from vkd_torchreid.data.mars import Mars
from vkd_torchreid.data.veri import VeRi
from vkd_torchreid.models.reference import HPARAMS
from vkd_torchreid.utils.logs import one_line, setup_logging, teardown_logging
from vkd_torchreid.utils.progress import progress_enabled

logger = logging.getLogger(__name__)


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
                verify(dest, src.checksums, check_zip)
            except DownloadError as exc:
                os.remove(dest)
                raise DownloadError(f"{src.url}: {exc}; the download was deleted and nothing "
                                    "was unpacked") from None
        else:
            try:
                verify(dest, src.checksums, check_zip)
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
    text.append(f"Then check it: vkd-reid check-dataset --root {shown} -s {name}")
    return "\n".join(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vkd-reid download", description=__doc__.splitlines()[0].split(": ", 1)[-1],
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
            print(f"check it with: vkd-reid check-dataset --root {args.root} -s vkd_mars")
        return 0
    except (DownloadError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        teardown_logging()


if __name__ == "__main__":
    raise SystemExit(main())
