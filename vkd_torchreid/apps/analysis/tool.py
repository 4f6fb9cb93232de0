"""The command-line side of every analysis: the shared arguments, ``main`` with one-line
errors, and writing a result."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, Dict, Optional, Sequence

from vkd_torchreid.apps.analysis.session import AnalysisSession
from vkd_torchreid.apps.common import add_config_arguments, command_parser, guarded, parse
from vkd_torchreid.utils.jsonio import write_json


def add_session_args(parser: argparse.ArgumentParser) -> None:
    """The arguments every analysis takes (``--config-file``, ``--weights``..., overrides)."""
    parser.add_argument("--weights", action="append", required=True,
                        help="a network's checkpoint (ours, torchreid's or a reference "
                             "folder); once per network, e.g. the teacher then the student")
    parser.add_argument("--label", action="append", default=[],
                        help="a network's name in the pictures (once per --weights, in order; "
                             "default: its run folder's name)")
    parser.add_argument("--output", required=True, help="the folder for the PNG and the JSON")
    parser.add_argument("--dataset", default="",
                        help="the dataset to analyse (default: the first of data.targets, "
                             "else of data.sources)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled objects in the checkpoints (trusted files only)")
    add_config_arguments(parser)


def tool_main(prog: str, doc: str, argv: Optional[Sequence[str]],
              add_args: Callable[[argparse.ArgumentParser], None],
              run: Callable[[AnalysisSession, argparse.Namespace], Dict[str, str]]) -> int:
    """The ``main`` of an analysis subcommand: the shared arguments plus ``add_args``, a
    session, ``run`` (returns the files it wrote); bad input is one ``error:`` line, exit 2."""
    parser = command_parser(prog, doc)
    add_session_args(parser)
    add_args(parser)

    def main() -> int:
        args = parse(parser, argv)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(message)s")
        session = AnalysisSession.from_args(args)
        paths = run(session, args)
        session.save()
        print("wrote " + ", ".join(paths.values()))
        return 0

    return guarded(main)


def write_result(result: Dict[str, Any], out: str, name: str,
                 plot: Callable[[Dict[str, Any], str], str]) -> Dict[str, str]:
    """Writes ``<out>/<name>.json`` (every number) and ``<out>/<name>.png`` (``plot``)."""
    paths = {"json": os.path.join(out, f"{name}.json"), "png": os.path.join(out, f"{name}.png")}
    write_json(result, paths["json"])
    plot(result, paths["png"])
    return paths


__all__ = ["add_session_args", "tool_main", "write_result"]
