"""``vkd-reid download``: the authors' released checkpoints and the public parts of the datasets.

    vkd-reid download checkpoints --root logs [--which baseline|distilled|all]
                                         [--url URL] [--sha256 HEX] [--remove-archive]
    vkd-reid download mars --root reid-data
    vkd-reid download veri|atrw|duke|prid2011 [--root reid-data]

``checkpoints`` fetches the reference implementation's Model Zoo archives (``baseline.zip``: the
teachers, ``distilled.zip``: the students; about 4.8 GB together) into ``--root`` and unpacks
them there; every experiment folder inside (``params/hparams.json`` + ``chk/``) is printed and is
what ``model.load_weights`` / ``vkd.teacher_checkpoint`` take as it is. ``mars`` fetches the
MARS frames from Google Drive and its evaluation metadata (``info/``) from the public
MARS-evaluation repository into ``--root/mars``. VeRi-776 and ATRW must be requested from their
authors and DukeMTMC was withdrawn: ``veri``, ``atrw`` and ``duke`` print where to get them and
the layout our loaders read.

Every address is in :data:`SOURCES`, every public dataset in :data:`DATASETS`. gdown does the
transfers into ``<file>.download/``, which a later run resumes; a file gets its final name only
once its checksums and archive CRCs check out, and an archive is unpacked into a hidden folder
renamed into place (:mod:`.fetch`). A file put at the final path by hand (after a browser
download) is verified and used as it is.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from vkd_torchreid.apps.common import EXIT_ERROR
from vkd_torchreid.apps.download.fetch import (
    RETRIES,
    DownloadError,
    Fetched,
    check_archive,
    fetch,
    short_reason,
    unpack,
)
from vkd_torchreid.apps.download.sources import (
    CHECKPOINTS,
    DATASETS,
    GDRIVE_FILE,
    GDRIVE_FOLDER,
    SOURCES,
    Source,
)
from vkd_torchreid.data.atrw import ATRW
from vkd_torchreid.data.duke import DukeVideo
from vkd_torchreid.data.prid2011 import PRID2011
from vkd_torchreid.data.veri import VeRi
from vkd_torchreid.models.reference import HPARAMS
from vkd_torchreid.utils.logs import one_line, setup_logging, teardown_logging

logger = logging.getLogger(__name__)

#: A Drive folder's listing (file name -> file id), by folder id: each folder is listed once.
Listing = Dict[str, Dict[str, str]]


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


def _address(src: Source, dest: str, listing: Listing) -> str:
    """The address gdown downloads ``src`` from (a Drive folder is listed with gdown)."""
    if src.kind == GDRIVE_FILE:
        return SOURCES["gdrive_direct"].url.format(id=src.drive_id)
    if src.kind != GDRIVE_FOLDER:
        return src.url
    if src.drive_id not in listing:
        import gdown

        try:
            files = gdown.download_folder(id=src.drive_id, skip_download=True, quiet=True)
        except Exception as exc:  # gdown raises its own errors, requests', ValueError...
            raise DownloadError(f"cannot list the Google Drive folder {src.url} "
                                f"({short_reason(exc)}); open it in a browser, download "
                                f"{src.filename} and put it at {dest}, then run this "
                                "again") from None
        listing[src.drive_id] = {os.path.basename(str(f.path)): str(f.id) for f in files or []}
    files = listing[src.drive_id]
    if src.filename not in files:
        raise DownloadError(f"{src.filename} is not in the Google Drive folder {src.url} "
                            f"(it holds {sorted(files)[:10]}); download it by hand and put it "
                            f"at {dest}")
    return SOURCES["gdrive_direct"].url.format(id=files[src.filename])


def fetch_source(key: str, folder: str, retries: int = RETRIES, url: Optional[str] = None,
                 sha256: Optional[str] = None, listing: Optional[Listing] = None
                 ) -> Tuple[Optional[Fetched], List[str]]:
    """Fetches and verifies ``SOURCES[key]`` into ``folder/<its subdir>``; unpacks an archive.

    Args:
        url, sha256: another address (a mirror) and the checksum it must match.

    Returns:
        (the file, or None when its archive was unpacked before; the unpacked top-level
        paths of an archive, else the file's path).
    """
    src = SOURCES[key]
    folder = os.path.join(folder, src.subdir)
    dest = os.path.join(folder, src.filename)
    tops = [os.path.join(folder, t) for t in src.top]
    if not url and tops and all(map(os.path.isdir, tops)):  # unpacking is atomic: complete
        logger.info("%s: %s already unpacked; nothing to do", key, ", ".join(tops))
        return None, tops
    checks = dataclasses.replace(src.checksums, sha256=sha256) if sha256 else src.checksums
    if url is None:
        url = src.url if os.path.isfile(dest) else _address(src, dest, {} if listing is None else listing)
    fetched = fetch(url, dest, checks, check_archive if src.top else None, retries,
                    page=src.page or src.url)
    return fetched, unpack(dest, folder, src.top) if src.top else [dest]


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
    listing: Listing = {}
    results = []
    for name in names:
        fetched, unpacked = fetch_source(name, root, retries, url, sha256, listing)
        if remove_archive and fetched is not None:
            os.remove(fetched.path)
        results.append((name, fetched, unpacked))
    return results


def download_dataset(name: str, root: str, retries: int = RETRIES) -> List[str]:
    """The public dataset ``DATASETS[name]`` under ``root``; returns the paths it laid out."""
    folder = os.path.join(root, DATASETS[name].folder)
    return [path for key in DATASETS[name].sources
            for path in fetch_source(key, folder, retries)[1]]


def _layout(layout: str, root: Optional[str]) -> str:
    prefix = (root or "<root>").rstrip("/\\") + "/"
    lines = layout.splitlines()
    return "\n".join(["  " + prefix + lines[0]] + ["  " + " " * len(prefix) + line
                                                   for line in lines[1:]])


#: Datasets that are not downloadable here: (registered dataset, its layout, what to say).
ON_REQUEST: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "veri": ("vkd_veri", VeRi.LAYOUT, (
        "VeRi-776 is not downloadable here: its authors give it out on request.",
        f"Request it from the project page: {SOURCES['veri'].url}",
        "Unpack it (rename the folder to VeRi if it is named otherwise) so that this layout "
        "exists (dataset vkd_veri):")),
    "atrw": ("vkd_atrw", ATRW.LAYOUT, (
        "ATRW (Amur tiger re-identification) is distributed by the CVWC 2019 organisers; this "
        "tool does not download it.",
        f"Get the re-ID archives (atrw_reid_train, atrw_anno_reid_train, atrw_reid_test, "
        f"atrw_anno_reid_test) from {SOURCES['atrw_cvwc'].url} or {SOURCES['atrw_lila'].url},",
        f"and the plain re-ID test ground truth annotations/gt_test_plain.json from "
        f"{SOURCES['atrw_eval'].url}.",
        "Lay them out as (dataset vkd_atrw):")),
    "duke": ("vkd_duke", DukeVideo.LAYOUT, (
        "DukeMTMC, and with it DukeMTMC-VideoReID, was withdrawn by its authors (Duke "
        "University) in 2019 and is no longer distributed; this tool does not point to copies.",
        "If you hold a copy obtained under its original terms, lay it out as (dataset "
        "vkd_duke):")),
    "prid2011": ("vkd_prid2011", PRID2011.LAYOUT, (
        "PRID2011 has no archive address this tool can fetch (torchreid's PRID2011 class has "
        "none either).",
        f"Get prid_2011.zip from its authors' page: {SOURCES['prid2011'].url}",
        "and torchreid's split file splits_prid2011.json (ten splits of the 178 people of the "
        f"standard protocol) from {SOURCES['prid2011_splits'].url}",
        "Lay them out as (dataset vkd_prid2011):")),
}


def instructions(what: str, root: Optional[str] = None) -> str:
    """What to print for a dataset of :data:`ON_REQUEST`."""
    if what not in ON_REQUEST:
        raise ValueError(f"no instructions for {what!r}")
    name, layout, text = ON_REQUEST[what]
    return "\n".join([*text, _layout(layout, root), "Then check it: vkd-reid check-dataset "
                      f"--root {root or '<root>'} -s {name}"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vkd-reid download", description=__doc__.splitlines()[0].split(": ", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    retries = dict(type=int, default=RETRIES,
                   help=f"resumes of a transfer that breaks off (default {RETRIES})")
    ck = sub.add_parser("checkpoints", help="the authors' released checkpoints (Model Zoo)")
    ck.add_argument("--root", required=True,
                    help="folder for the archives and the unpacked experiment folders")
    ck.add_argument("--which", choices=(*CHECKPOINTS, "all"), default="all",
                    help="baseline (teachers), distilled (students) or all (default)")
    ck.add_argument("--url", help="address of the one archive asked for (a mirror)")
    ck.add_argument("--sha256", help="expected SHA-256 of the one archive asked for")
    ck.add_argument("--retries", **retries)
    ck.add_argument("--remove-archive", action="store_true",
                    help="delete each archive once it is unpacked")
    for name, dataset in DATASETS.items():
        ds = sub.add_parser(name, help=dataset.help)
        ds.add_argument("--root", required=True,
                        help=f"data root; it goes to ROOT/{dataset.folder}")
        ds.add_argument("--retries", **retries)
    for what in ON_REQUEST:
        sub.add_parser(what, help=f"where to get {what}, and its layout").add_argument(
            "--root", help="data root (for the paths)")
    return parser


def _valid_hex(value: Optional[str], length: int, flag: str) -> Optional[str]:
    if value is None:
        return None
    if not re.fullmatch(rf"[0-9a-fA-F]{{{length}}}", value):
        raise DownloadError(f"{flag} {value!r}: expected {length} hexadecimal digits")
    return value.lower()


def _checkpoints(args: argparse.Namespace) -> None:
    sha = _valid_hex(args.sha256, 64, "--sha256")
    if args.url and not re.match(r"^https?://", args.url):
        raise DownloadError(f"--url {args.url!r}: expected an http:// or https:// address")
    names = CHECKPOINTS if args.which == "all" else (args.which,)
    for name, fetched, unpacked in download_checkpoints(args.root, names, args.url, sha,
                                                        args.retries, args.remove_archive):
        if fetched is None:
            print(f"{name}: already unpacked")
        else:
            print(f"{name}: {fetched.path} ({fetched.size} bytes, {fetched.how}, "
                  f"sha256 {fetched.sha256})")
        for path in unpacked:
            print(f"  unpacked: {path}")
        for folder in find_experiments(unpacked):
            print(f"  experiment: {folder}")
    print("evaluate an experiment with: vkd-reid eval --config-file CONFIG "
          "--root DATA_ROOT model.load_weights EXPERIMENT_FOLDER")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code (2 and one ``error:`` line on failure)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.what in ON_REQUEST:
        print(instructions(args.what, args.root))
        return 0
    setup_logging()
    try:
        if args.retries < 0:
            raise DownloadError("--retries must be >= 0")
        if args.what == "checkpoints":
            _checkpoints(args)
        else:
            for path in download_dataset(args.what, args.root, args.retries):
                print(f"{args.what}: {path}")
            print(f"check it with: vkd-reid check-dataset --root {args.root} -s "
                  f"{DATASETS[args.what].registered}")
        return 0
    except (DownloadError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        teardown_logging()


if __name__ == "__main__":
    raise SystemExit(main())
