"""Every address :mod:`vkd_torchreid.apps.download` uses, in one table (:data:`SOURCES`), and
the public datasets made of them (:data:`DATASETS`).

A new public dataset is one :class:`Source` per file (an archive names its top-level folders in
``top`` and is unpacked) and one :data:`DATASETS` entry; ``download <name>`` then fetches,
verifies and unpacks it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from vkd_torchreid.apps.download.fetch import Checksums

# Kinds of :class:`Source`.
HTTPS = "https"                 # a file at a plain address
GDRIVE_FILE = "gdrive_file"     # a Google Drive file (``drive_id``)
GDRIVE_FOLDER = "gdrive_folder"  # a file inside a Google Drive folder (``drive_id``, ``filename``)
TEMPLATE = "template"           # an address pattern
PAGE = "page"                   # a web page for a person to read


@dataclass(frozen=True)
class Source:
    """One entry of :data:`SOURCES`."""

    url: str
    kind: str = HTTPS
    filename: str = ""
    checksums: Checksums = Checksums()
    drive_id: str = ""
    #: An archive's top-level folders: it is unpacked, and skipped once they exist.
    top: Tuple[str, ...] = ()
    #: Where it goes, under the dataset's folder.
    subdir: str = ""
    #: Where a person can download it by hand, if not ``url`` (named when a download fails).
    page: str = ""
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


def _mars_info(name: str, checksums: Checksums) -> Source:
    """A file of MARS-evaluation's ``info/`` at the pinned commit."""
    return Source(_MARS_RAW + name, HTTPS, name, checksums, subdir="info", origin=_MARS_ORIGIN)


_MARS_DRIVE = "https://drive.google.com/drive/folders/0B6tjyrV1YrHeMVV2UFFXQld6X1E"
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
    # The address of a Drive file id; gdown follows Drive's large-file confirmation from it.
    "gdrive_direct": Source("https://drive.google.com/uc?id={id}", TEMPLATE,
                            origin="Google Drive's download address, as gdown builds it"),
    # -- MARS -------------------------------------------------------------------------------
    "mars_drive": Source(_MARS_DRIVE, PAGE, origin="github.com/aimagelab/VKD README, 'Data preparation'"),
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
    "mars_info_train_name": _mars_info(
        "train_name.txt", Checksums(git_sha1="72c8a124c9a3113356f7eb4b54123c0205075205")),
    "mars_info_test_name": _mars_info(
        "test_name.txt", Checksums(git_sha1="cf85618306ef6902dca900a18f91532e44f4dad4")),
    "mars_info_tracks_train": _mars_info("tracks_train_info.mat", Checksums(
        sha256="bae1ca16a6afbad1db664fbd4a60f8761585d7fb591c5e20b714f637dba3636b")),
    "mars_info_tracks_test": _mars_info("tracks_test_info.mat", Checksums(
        sha256="35a5464d1219cc42001ddb6cdb2c1e88ae2bc9d516e559d44a68310521386b56")),
    "mars_info_query_idx": _mars_info("query_IDX.mat", Checksums(
        sha256="2b580c94cf7934dbe3320c628b915dba76153c60effa94c1f48995ae8b96a932")),
    # -- iLIDS-VID and PRID2011 ---------------------------------------------------------------
    "ilidsvid": Source(
        "https://www.eecs.qmul.ac.uk/~xiatian/iLIDS-VID/iLIDS-VID.tar", HTTPS, "iLIDS-VID.tar",
        top=("i-LIDS-VID", "train-test people splits"),
        page="https://www.eecs.qmul.ac.uk/~xiatian/downloads_qmul_iLIDS-VID_ReID_dataset.html",
        origin="torchreid's iLIDSVID.dataset_url (http://www.eecs.qmul.ac.uk/~xiatian/iLIDS-VID/"
               "iLIDS-VID.tar), asked over https; no published checksum, so the archive is "
               "checked as a tar holding both folders"),
    "prid2011": Source("https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/"
                       "PRID11/", PAGE, origin="torchreid's PRID2011 class docstring (URL)"),
    "prid2011_splits": Source(
        "https://drive.google.com/open?id=1qw7SI7YdIgfHetIQO7LLW4SHpL_qkieT", PAGE,
        origin="torchreid's docs (docs/datasets.rst, PRID2011: 'the split created by iLIDS-VID')"),
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


@dataclass(frozen=True)
class Dataset:
    """A public dataset: its :data:`SOURCES` in download order, fetched into ``root/folder``."""

    folder: str
    #: The registered dataset that reads it (named in the check command printed at the end).
    registered: str
    sources: Tuple[str, ...]
    help: str


#: ``download <name>``: the public datasets. The metadata comes first, so a wrong checksum
#: stops a run before the large archives.
DATASETS: Dict[str, Dataset] = {
    "mars": Dataset("mars", "vkd_mars", MARS_INFO + MARS_FRAMES,
                    "MARS frames (Google Drive) and info/ metadata"),
    "ilidsvid": Dataset("ilids-vid", "vkd_ilidsvid", ("ilidsvid",),
                        "iLIDS-VID (public tar), laid out as torchreid's"),
}
