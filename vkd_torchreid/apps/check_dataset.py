"""``vkd-reid check-dataset``: parses the datasets of a config, then confirms that every image
they reference exists and decodes.

    vkd-reid check-dataset --root reid-data -s vkd_mars
    vkd-reid check-dataset --config-file vkd_duke_r50 --root reid-data \\
        data.duke_tracklets reference
    vkd-reid check-dataset --root reid-data -s vkd_atrw data.atrw_views side --no-decode

The datasets are ``data.sources`` and ``data.targets`` at ``data.root``, parsed with the
config's dataset options (``data.mars_query_in_gallery``, ``data.atrw_views``,
``data.duke_tracklets``, ``data.veri_query_track``), as training reads them.

Exit status: 0 healthy, 1 some images are missing or corrupt (each is listed), 2 the root, a
dataset folder or an annotation file is missing or malformed (one ``error:`` line on stderr).
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from vkd_torchreid.apps.common import (
    UserError,
    add_config_arguments,
    command_parser,
    config_of,
    guarded,
    parse,
)
from vkd_torchreid.data.check import check_dataset, format_statistics
from vkd_torchreid.data.registry import dataset_class
from vkd_torchreid.utils.logs import one_line

#: Exit status of a dataset with missing or corrupt images.
EXIT_PROBLEMS = 1


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("vkd-reid check-dataset", __doc__)
    parser.add_argument("--no-decode", action="store_true",
                        help="only check that image files exist (much faster)")
    return add_config_arguments(parser)


def _check(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    root = cfg.data.root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"missing root folder {root} (data.root)")
    status = 0
    for name in dict.fromkeys([*cfg.data.sources, *cfg.data.targets]):
        # the dataset's own options, from the data.* keys of the same names
        options = {key: cfg.data[key] for key in dataset_class(name).OPTIONS}
        try:
            splits, problems = check_dataset(name, root, decode=not args.no_decode, **options)
        except (OSError, ValueError) as exc:  # the expected layout follows the first line
            raise UserError(" ".join(one_line(exc).split())) from None
        print(format_statistics(splits))
        for problem in problems:
            print(problem)
        if problems:
            print(f"{len(problems)} problem(s) in {name} at {root}")
            status = EXIT_PROBLEMS
        else:
            print(f"{name} at {root}: ok")
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid check-dataset``; returns the exit status (0, 1 or 2, see the module)."""
    return guarded(lambda: _check(parse(build_parser(), argv)))
