"""Writes tiny synthetic datasets in the real on-disk layouts.

    python tools/make_synthetic.py --dataset all --root reid-data-synthetic
    python tools/make_synthetic.py --dataset vkd_mars --root reid-data --masks reid-masks
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import List, Optional

if importlib.util.find_spec("vkd_torchreid") is None:  # a source checkout, not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: Optional[List[str]] = None) -> int:
    from vkd_torchreid.synthetic import DATASET_DIRS, write_synthetic

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=[*sorted(DATASET_DIRS), "all"])
    parser.add_argument("--root", required=True, help="parent folder of the dataset folders")
    parser.add_argument("--ids", type=int, default=8)
    parser.add_argument("--cams", type=int, default=3)
    parser.add_argument("--tracklets", type=int, default=2, help="per identity and camera")
    parser.add_argument("--frames", type=int, default=8, help="per tracklet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--masks", default="",
                        help="also write each frame's person mask under this folder, outside "
                             "the dataset layout (for vkd-reid explain --masks)")
    args = parser.parse_args(argv)

    names = sorted(DATASET_DIRS) if args.dataset == "all" else [args.dataset]
    for name in names:
        try:
            counts = write_synthetic(name, args.root, ids=args.ids, cams=args.cams,
                                     tracklets=args.tracklets, frames=args.frames,
                                     seed=args.seed, height=args.height, width=args.width,
                                     masks=args.masks)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
