"""What every ``vkd-reid`` command shares: its config, its command line and its error exit.

- The config: :func:`load_config` (defaults plus the applications' sections, the file, KEY
  VALUE overrides; validated) and :func:`derive` (a config from another, validated again).
- The command line: ``--config-file``, the data shortcuts (``--root``, ``-s``, ``-t``: the
  one place they map to ``data.*`` keys) and KEY VALUE overrides, split from the command's
  own arguments by :func:`split_overrides` and parsed by :func:`parse`.
- The error exit: :func:`guarded` runs a command and turns the errors a user can fix into one
  ``error: ...`` line on stderr and exit status :data:`EXIT_ERROR`, without a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Type, Union

from yacs.config import CfgNode

from vkd_torchreid.apps.demo_config import DEMO_CONFIG
from vkd_torchreid.config import (
    ConfigExtension,
    build_config,
    derive_config,
    get_default_config,
)
from vkd_torchreid.utils.checkpoint import CheckpointError
from vkd_torchreid.utils.jsonio import write_json
from vkd_torchreid.utils.logs import attach_log_file, one_line

#: The exit status of an error the user can fix (also argparse's).
EXIT_ERROR = 2
#: The resolved config a run writes into its save dir.
CONFIG_FILE = "config.yaml"


class UserError(Exception):
    """An error the user can fix; printed as one line."""


#: What :func:`guarded` reports as one line: bad input, missing or unreadable files,
#: checkpoints that do not fit, a missing optional dependency.
USER_ERRORS: Tuple[Type[BaseException], ...] = (
    UserError, OSError, KeyError, ValueError, ImportError, CheckpointError)


# --------------------------------------------------------------------------- config

def config_extensions() -> List[ConfigExtension]:
    """The sections applications add to the schema (the demo's), so that every command
    accepts every config file (``configs/demo.yaml`` too)."""
    return [DEMO_CONFIG]


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """Default config (with :func:`config_extensions`) <- ``config_file`` (a path or a packaged
    config's name) <- KEY VALUE ``opts``; validated and frozen.

    Raises:
        FileNotFoundError: no such config file. KeyError: an unknown key.
        ValueError: a value that is not allowed (one line naming the key).
    """
    return build_config(config_file, list(opts), config_extensions())


def derive(cfg: CfgNode, changes: Union[Mapping[str, Any], Sequence[Any]]) -> CfgNode:
    """A copy of ``cfg`` with changes, validated again like a loaded config.

    Args:
        changes: ``{"dotted.key": value}`` or a ``[KEY, VALUE, ...]`` list; values are Python
            objects, or strings parsed as on the command line.

    Raises:
        KeyError: an unknown key. ValueError: a change that makes the config invalid.
    """
    opts = ([x for pair in changes.items() for x in pair] if isinstance(changes, Mapping)
            else list(changes))
    return derive_config(cfg, opts, config_extensions())


def start_run_folder(cfg: CfgNode) -> None:
    """The run log and the resolved config (``config.yaml``) in ``data.save_dir``."""
    attach_log_file(cfg.data.save_dir)
    with open(os.path.join(cfg.data.save_dir, CONFIG_FILE), "w", encoding="utf-8") as fh:
        fh.write(cfg.dump())


# --------------------------------------------------------------------------- command line

class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are :class:`UserError` (one line, exit 2 through
    :func:`guarded`) instead of argparse's usage text and ``SystemExit``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def write_summary(summary: Mapping[str, Any], table: str, out: str, stem: str) -> None:
    """Writes ``<out>/<stem>.json`` (every number) and ``<out>/<stem>.md`` (``table``), then
    prints the table: how the study and the ten-split runs end."""
    write_json(dict(summary), os.path.join(out, f"{stem}.json"))
    with open(os.path.join(out, f"{stem}.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    print(table)


def command_parser(prog: str, doc: str) -> CommandParser:
    """A parser for ``vkd-reid COMMAND`` described by ``doc`` (kept as written)."""
    return CommandParser(prog=prog, description=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config_arguments(parser: argparse.ArgumentParser, config_file: str = "",
                         data_shortcuts: bool = True) -> argparse.ArgumentParser:
    """``--config-file``, the data shortcuts (``--root``, ``-s``, ``-t``) and KEY VALUE
    overrides (``opts``; see :func:`parse`)."""
    parser.add_argument("--config-file", default=config_file,
                        help="yaml config (with _BASE_ inheritance) or the name of a packaged "
                             f"config{f' (default: {config_file})' if config_file else ''}")
    if data_shortcuts:
        parser.add_argument("--root", default="", help="data.root: folder holding the datasets")
        parser.add_argument("-s", "--sources", nargs="+", default=None,
                            help="data.sources (and data.targets, unless -t is given)")
        parser.add_argument("-t", "--targets", nargs="+", default=None, help="data.targets")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides, e.g. data.root reid-data "
                             "train.max_epoch 10")
    return parser


def shortcut_opts(args: argparse.Namespace) -> List[str]:
    """The KEY VALUE overrides the data shortcuts stand for: ``--root R`` is ``data.root R``;
    ``-s A B`` is ``data.sources [A, B]`` and, without ``-t``, ``data.targets [A, B]``."""
    opts: List[str] = []
    if getattr(args, "root", ""):
        opts += ["data.root", args.root]
    sources, targets = getattr(args, "sources", None), getattr(args, "targets", None)
    if sources:
        opts += ["data.sources", str(list(sources))]
    if targets or sources:
        opts += ["data.targets", str(list(targets or sources))]
    return opts


def split_overrides(argv: Sequence[str], parser: Optional[argparse.ArgumentParser] = None
                    ) -> Tuple[List[str], List[str]]:
    """(the command's own arguments, the KEY VALUE overrides): the overrides start at the
    first config key (``data.root``, ``use_gpu``...) that is not the value of an option of
    ``parser`` (``--weights model.pth``), so that options taking several values
    (``--frames 1 2 all``, ``-s vkd_mars vkd_duke``) may come anywhere before them."""
    cfg = get_default_config()
    for extension in config_extensions():
        extension.add(cfg)
    options = getattr(parser, "_option_string_actions", {})
    values = 0  # tokens still to skip: the values of the last option
    for i, token in enumerate(argv):
        if values:
            values -= 1
            continue
        if token.startswith("-"):
            action = options.get(token)
            nargs = action.nargs if action is not None else 0
            values = 1 if nargs in (None, "?") else nargs if isinstance(nargs, int) else 0
            if nargs == "?" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
                values = 0
            continue
        head = token.split(".")[0]
        if head in cfg and ("." in token or not isinstance(cfg[head], dict)):
            return list(argv[:i]), list(argv[i:])
    return list(argv), []


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parses a command line of ``parser`` (``sys.argv[1:]`` when ``argv`` is None): the
    command's arguments, then KEY VALUE overrides, gathered in ``args.opts``."""
    own, opts = split_overrides(list(sys.argv[1:] if argv is None else argv), parser)
    args = parser.parse_args(own)
    args.opts = [*(getattr(args, "opts", None) or ()), *opts]
    return args


def config_of(args: argparse.Namespace, *flag_opts: str) -> CfgNode:
    """The config of parsed arguments: ``--config-file`` <- the data shortcuts <-
    ``flag_opts`` (what the command's own flags stand for) <- ``args.opts``."""
    return load_config(args.config_file,
                       [*shortcut_opts(args), *flag_opts, *(args.opts or ())])


# --------------------------------------------------------------------------- errors

def report(exc: BaseException) -> int:
    """Prints ``error: <one line>`` on stderr; returns :data:`EXIT_ERROR`."""
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return EXIT_ERROR


def guarded(run: Callable[[], int], errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Runs a command; :data:`USER_ERRORS` and ``errors`` become one ``error:`` line and
    :data:`EXIT_ERROR`. Returns ``run``'s exit status otherwise."""
    try:
        return run()
    except (*USER_ERRORS, *errors) as exc:
        return report(exc)


__all__ = ["CONFIG_FILE", "EXIT_ERROR", "USER_ERRORS", "CommandParser", "UserError", "add_config_arguments",
           "command_parser", "config_extensions", "config_of", "derive", "guarded",
           "load_config", "parse", "report", "shortcut_opts", "split_overrides", "write_summary",
           "start_run_folder"]
