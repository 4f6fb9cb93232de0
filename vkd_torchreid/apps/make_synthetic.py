"""``vkd-reid make-synthetic``: writes tiny synthetic datasets in the real on-disk layouts.

    vkd-reid make-synthetic --root reid-data-synthetic --all
    vkd-reid make-synthetic --root reid-data -s vkd_mars --ids 20 --cams 4 --masks reid-masks

The datasets are ``data.sources`` and ``data.targets`` (``--all``: every dataset with a
synthetic writer), written under ``data.root``. The world's shape (identities, cameras,
tracklets, frames, frame size, seed) is the command's own: the same arguments give
byte-identical files. A dataset folder holding data that is not synthetic is left alone (an
``error:`` line).
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from vkd_torchreid.apps.common import (
    add_config_arguments,
    command_parser,
    config_of,
    guarded,
    parse,
)
from vkd_torchreid.synthetic import DATASET_DIRS, write_synthetic


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("vkd-reid make-synthetic", __doc__)
    parser.add_argument("--all", action="store_true",
                        help=f"every dataset: {', '.join(sorted(DATASET_DIRS))}")
    parser.add_argument("--ids", type=int, default=8, help="identities (half train, half test)")
    parser.add_argument("--cams", type=int, default=3, help="cameras")
    parser.add_argument("--tracklets", type=int, default=2, help="per identity and camera")
    parser.add_argument("--frames", type=int, default=8, help="per tracklet")
    parser.add_argument("--seed", type=int, default=0, help="of the world's appearance")
    parser.add_argument("--height", type=int, default=128,
                        help="of the written frames (the network's input is data.height)")
    parser.add_argument("--width", type=int, default=64,
                        help="of the written frames (the network's input is data.width)")
    parser.add_argument("--masks", default="",
                        help="also write each frame's person mask under this folder, outside "
                             "the dataset layout (for vkd-reid explain --masks)")
    return add_config_arguments(parser)


def _write(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    names = (sorted(DATASET_DIRS) if args.all
             else list(dict.fromkeys([*cfg.data.sources, *cfg.data.targets])))
    for name in names:
        counts = write_synthetic(name, cfg.data.root, ids=args.ids, cams=args.cams,
                                 tracklets=args.tracklets, frames=args.frames, seed=args.seed,
                                 height=args.height, width=args.width, masks=args.masks)
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid make-synthetic``; returns the exit status."""
    return guarded(lambda: _write(parse(build_parser(), argv)))
