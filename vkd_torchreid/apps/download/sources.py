"""Every address :mod:`vkd_torchreid.apps.download` uses, in one table (:data:`SOURCES`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from vkd_torchreid.apps.download.fetch import Checksums

# Kinds of :class:`Source`.
HTTPS = "https"                 # a file fetched with requests
GDRIVE_FILE = "gdrive_file"     # a Google Drive file fetched with gdown (``drive_id``)
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
    # -- iLIDS-VID and PRID2011 ---------------------------------------------------------------
    "ilidsvid": Source(
        "https://www.eecs.qmul.ac.uk/~xiatian/iLIDS-VID/iLIDS-VID.tar", HTTPS, "iLIDS-VID.tar",
        top=("i-LIDS-VID", "train-test people splits"),
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
