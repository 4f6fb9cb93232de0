"""The command-line side of every analysis: the shared arguments, the split of the tool's own
arguments from KEY VALUE overrides, ``main`` with one-line errors, and writing a result."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from vkd_torchreid.apps.analysis.session import AnalysisSession
from vkd_torchreid.apps.demo_config import DEMO_CONFIG
from vkd_torchreid.config import get_default_config
from vkd_torchreid.utils.jsonio import write_json
from vkd_torchreid.utils.logs import one_line


def add_session_args(parser: argparse.ArgumentParser) -> None:
    """The arguments every analysis takes (``--config-file``, ``--weights``..., overrides)."""
    parser.add_argument("--config-file", default="", help="a config path or a packaged name")
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
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")


def split_overrides(argv: Sequence[str]) -> tuple:
    """(the tool's own arguments, the KEY VALUE overrides): the overrides start at the first
    config key (``data.root``, ``use_gpu``...), so that options taking several values
    (``--frames 1 2 all``) may come anywhere before them."""
    cfg = get_default_config()
    DEMO_CONFIG.add(cfg)
    for i, token in enumerate(argv):
        head = token.split(".")[0]
        if not token.startswith("-") and head in cfg and (
                "." in token or not isinstance(cfg[head], dict)):
            return list(argv[:i]), list(argv[i:])
    return list(argv), []


def tool_main(prog: str, doc: str, argv: Optional[Sequence[str]],
              add_args: Callable[[argparse.ArgumentParser], None],
              run: Callable[[AnalysisSession, argparse.Namespace], Dict[str, str]]) -> int:
    """The ``main`` of an analysis subcommand: the shared arguments plus ``add_args``, a
    session, ``run`` (returns the files it wrote); bad input is one ``error:`` line, exit 2."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_session_args(parser)
    add_args(parser)
    own, opts = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(own)
    args.opts = [*(args.opts or ()), *opts]
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        session = AnalysisSession.from_args(args)
        paths = run(session, args)
        session.save()
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(paths.values()))
    return 0


def write_result(result: Dict[str, Any], out: str, name: str,
                 plot: Callable[[Dict[str, Any], str], str]) -> Dict[str, str]:
    """Writes ``<out>/<name>.json`` (every number) and ``<out>/<name>.png`` (``plot``)."""
    paths = {"json": os.path.join(out, f"{name}.json"), "png": os.path.join(out, f"{name}.png")}
    write_json(result, paths["json"])
    plot(result, paths["png"])
    return paths


__all__ = ["add_session_args", "split_overrides", "tool_main", "write_result"]
