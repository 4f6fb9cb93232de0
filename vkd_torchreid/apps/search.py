"""``vkd-reid search``: the matches of a query image in a gallery of tracklets.

    vkd-reid search --config-file vkd_mars_r50 --weights W.pth.tar --query q.jpg \\
        (--gallery DIR | --index FOLDER) [--k 10] [--save-index FOLDER] [--output list.png]

``DIR`` holds one sub-folder of frames per tracklet, named ``<pid>_<camid>_<anything>`` when the
identity and camera are known (other names are kept as labels, with unknown ids). The gallery
is embedded as our evaluation does (:class:`~vkd_torchreid.apps.features.FeatureExtractor`)
and searched by cosine similarity (:class:`~vkd_torchreid.search.GalleryIndex`);
``--save-index`` keeps it for later queries (``--index``), with the identity of the network
that embedded it: a hash of its weights, its architecture and the input settings (size,
normalisation, frames per tracklet). ``--index`` with other weights or settings is an error,
as are weights that declare another architecture than ``model.name`` (as for ``export``).
Prints the top k and, from a
gallery folder (whose frames it can show), writes a ranked-list picture with the
evaluation's renderer.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from typing import List, Optional, Sequence, Tuple

from vkd_torchreid.apps.common import add_config_arguments, command_parser, guarded, parse
from vkd_torchreid.apps.features import FeatureExtractor
from vkd_torchreid.data.io import read_image
from vkd_torchreid.evaluation import RankedItem, save_ranked_list
from vkd_torchreid.search import BACKENDS, GalleryIndex

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_NAME = re.compile(r"^(-?\d+)_(-?\d+)_")


def gallery_tracklets(folder: str) -> Tuple[List[str], List[List[str]], List[int], List[int]]:
    """(names, frame paths, pids, camids) of the tracklet sub-folders of ``folder``.

    Raises:
        FileNotFoundError: no such folder. ValueError: no tracklet with frames in it.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--gallery: not a folder: {folder}")
    names, frames, pids, camids = [], [], [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isdir(path):
            continue
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            continue
        match = _NAME.match(name)
        names.append(name)
        frames.append(files)
        pids.append(int(match.group(1)) if match else -1)
        camids.append(int(match.group(2)) if match else -1)
    if not frames:
        raise ValueError(f"--gallery {folder} holds no tracklet: expected one sub-folder of "
                         f"frames ({', '.join(IMAGE_SUFFIXES)}) per tracklet")
    return names, frames, pids, camids


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("vkd-reid search", __doc__)
    p.add_argument("--weights", required=True, help="ours, torchreid's or a reference folder")
    p.add_argument("--query", required=True, help="the query image")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gallery", help="a folder of tracklet sub-folders")
    src.add_argument("--index", help="a gallery index saved with --save-index")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--backend", choices=BACKENDS, default="exact")
    p.add_argument("--save-index", default="", help="keep the gallery's index in this folder")
    p.add_argument("--output", default="ranked_list.png", help="the ranked-list picture")
    p.add_argument("--device", default="auto")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a legacy pickled checkpoint (torch.load weights_only=False)")
    return add_config_arguments(p, data_shortcuts=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid search``; returns the exit code."""
    return guarded(lambda: _search(parse(build_parser(), argv)))


def _search(args: argparse.Namespace) -> int:
    """Runs a search of parsed arguments; returns the exit code."""
    fx = FeatureExtractor(args.config_file, args.weights, args.device, args.opts,
                          trust_checkpoint=args.trust_checkpoint, require_arch=True)
    first_frames = {}  # tracklet name -> first frame, for the picture (a gallery folder)
    if args.index:
        index = GalleryIndex.load(args.index)
        index.check_network(fx.identity(), f"--index {args.index}")
    else:
        names, frames, pids, camids = gallery_tracklets(args.gallery)
        first_frames = {name: files[0] for name, files in zip(names, frames)}
        index = GalleryIndex.build(fx.tracklets(frames), pids, camids, args.backend,
                                   names=names, network=fx.identity())
    if args.save_index:
        index.save(args.save_index)
        print(f"gallery index of {len(index)} tracklets saved to {args.save_index}")
    query = read_image(args.query)
    scores, idx = index.search(fx([query]), args.k)
    items = []
    print(f"top {idx.shape[1]} of {len(index)} for {args.query}:")
    for rank, (score, i) in enumerate(zip(scores[0].tolist(), idx[0].tolist()), 1):
        if i < 0:
            break
        name, pid, cam = index.names[i], int(index.pids[i]), int(index.camids[i])
        print(f"{rank:3d}  {score:.4f}  {name or i}  pid {pid}  cam {cam}")
        if name in first_frames:
            items.append(RankedItem(read_image(first_frames[name]), score, None, str(pid)))
    if items:
        print(f"ranked list: {save_ranked_list(args.output, query, items)}")
    return 0
