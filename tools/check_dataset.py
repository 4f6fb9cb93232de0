"""Checks a dataset root: parses it, then confirms every referenced image exists and decodes.

    python tools/check_dataset.py --dataset vkd_mars --root reid-data
    python tools/check_dataset.py --dataset vkd_atrw --root reid-data --atrw-views side
    python tools/check_dataset.py --dataset vkd_duke --root reid-data --duke-tracklets reference
    python tools/check_dataset.py --dataset vkd_ilidsvid --root reid-data --split-id 3

Exit status: 0 healthy, 1 some images are missing or corrupt (each is listed), 2 the dataset
folder or an annotation file is missing or malformed (one ``error:`` line on stderr).
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
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True,
                        help="vkd_mars, vkd_duke, vkd_veri, vkd_atrw, vkd_ilidsvid or "
                             "vkd_prid2011")
    parser.add_argument("--root", required=True, help="the folder holding the dataset folder")
    parser.add_argument("--no-decode", action="store_true",
                        help="only check that image files exist (much faster)")
    parser.add_argument("--atrw-views", default=None, help="ATRW training views (vkd_atrw)")
    parser.add_argument("--duke-tracklets", default=None, choices=("folder", "reference"),
                        help="Duke tracklets: one per folder, or the reference's merged "
                             "consecutive folders (vkd_duke)")
    parser.add_argument("--veri-query-track", default=None, choices=("first", "longest"),
                        help="VeRi video query: the longest track, or the first as the "
                             "reference (vkd_veri)")
    parser.add_argument("--split-id", type=int, default=None,
                        help="which of the ten train/test splits, 0-9 (vkd_ilidsvid, "
                             "vkd_prid2011)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):  # fail fast, before importing torch
        print(f"error: missing root folder {args.root}", file=sys.stderr)
        return 2

    from vkd_torchreid.data.check import check_dataset, format_statistics

    options = {key: value for key, value in (("atrw_views", args.atrw_views),
                                             ("duke_tracklets", args.duke_tracklets),
                                             ("veri_query_track", args.veri_query_track),
                                             ("split_id", args.split_id))
               if value is not None}
    try:
        splits, problems = check_dataset(args.dataset, args.root, decode=not args.no_decode,
                                         **options)
    except (FileNotFoundError, ValueError, OSError) as exc:
        first = " ".join(str(exc).split("\n", 1)[0].split())
        print(f"error: {first.removesuffix('; expected layout:')}", file=sys.stderr)
        return 2
    print(format_statistics(splits))
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dataset} at {args.root}")
        return 1
    print(f"{args.dataset} at {args.root}: ok")
    return 0

if __name__ == "__main__":
    sys.exit(main())
