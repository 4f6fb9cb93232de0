"""The ``vkd-reid`` command line (``tools/main.py`` is a thin wrapper around it).

    vkd-reid [COMMAND] --config-file X [KEY VALUE ...]

COMMAND is one of :data:`COMMANDS`; ``train`` is the default when the first argument is not a
command. ``--config-file`` takes a path or the name of a packaged config (``vkd_mars_r50``).

Under ``torchrun`` (``train`` and ``eval``) every process runs this same command: they join
one process group, check that they resolved the same config, and stop together on any
rank's error; rank 0 alone prints and writes.
"""
from __future__ import annotations

import argparse
import functools
import logging
import logging.handlers
import os
import sys
import time
from typing import Any, List, Optional, Sequence

from yacs.config import CfgNode

from vkd_torchreid.config import build_config
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.logs import (  # noqa: F401  (LOG_FILE: the run log's name)
    LOG_FILE,
    attach_log_file,
    one_line,
    setup_logging,
    teardown_logging,
)
from vkd_torchreid.utils.seeding import set_seed

logger = logging.getLogger("vkd_torchreid")

EXIT_ERROR = 2
CONFIG_FILE = "config.yaml"


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config-file", default="", help="yaml config (with _BASE_ inheritance)")
    parser.add_argument("--root", default="", help="data.root: folder holding the datasets")
    parser.add_argument("-s", "--sources", nargs="+", default=None, help="data.sources")
    parser.add_argument("-t", "--targets", nargs="+", default=None, help="data.targets")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate model.load_weights (ours, torchreid's or a released "
                             "reference experiment) without training")
    parser.add_argument("--resume", nargs="?", const="latest", default="",
                        help="resume from PATH, or from the latest checkpoint in the save dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow starting a new run in a save dir that holds checkpoints")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow legacy pickled checkpoints (torch.load weights_only=False)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides, e.g. train.max_epoch 10")
    return parser


def config_extensions() -> list:
    """The sections applications add to the schema (the demo's)."""
    from vkd_torchreid.apps.demo_config import DEMO_CONFIG

    return [DEMO_CONFIG]


def config_from_args(args: argparse.Namespace) -> CfgNode:
    """Default config <- file <- --root/-s/-t <- KEY VALUE overrides; validated."""
    opts: List[str] = []
    if args.root:
        opts += ["data.root", args.root]
    if args.sources:
        opts += ["data.sources", str(args.sources)]
        if not args.targets:
            opts += ["data.targets", str(args.sources)]
    if args.targets:
        opts += ["data.targets", str(args.targets)]
    if args.trust_checkpoint:
        opts += ["model.trust_checkpoint", "True"]
    return build_config(args.config_file, opts + list(args.opts or []), config_extensions())


def resolve_resume(args: argparse.Namespace, cfg: CfgNode) -> str:
    """The checkpoint to resume from ('' for a fresh run); refuses to clobber a finished one.

    ``--resume PATH`` and ``model.resume PATH`` are the same; ``--resume`` alone takes the
    latest checkpoint of the save dir.
    """
    from vkd_torchreid.utils.checkpoint import find_latest

    save_dir = cfg.data.save_dir
    if not args.resume and cfg.model.resume:
        if not os.path.isfile(cfg.model.resume):
            raise UserError(f"model.resume: checkpoint not found: {cfg.model.resume}")
        return cfg.model.resume
    if args.resume == "latest":
        path = find_latest(save_dir)
        if path is None:
            raise UserError(f"--resume: no checkpoint in {save_dir}")
        return path
    if args.resume:
        if not os.path.isfile(args.resume):
            raise UserError(f"--resume: checkpoint not found: {args.resume}")
        return args.resume
    existing = find_latest(save_dir)
    if existing and not args.overwrite and not args.eval_only:
        raise UserError(f"{save_dir} already holds checkpoints ({existing}); pass --resume to "
                        "continue that run, --overwrite to start over, or set data.save_dir")
    return ""


def _prepare(cfg: CfgNode, args: argparse.Namespace, demo: bool) -> Any:
    """The checked job (None for the demo); nothing written yet."""
    from vkd_torchreid.engine import build

    if demo and distributed.context().enabled:
        raise UserError("the demo runs in one process: launch it without torchrun")
    if demo and (args.resume or args.eval_only or cfg.model.resume):
        raise UserError("the demo (demo.enabled True) always starts fresh in a new run folder; "
                        "--resume, model.resume and --eval-only do not apply to it")
    if demo:  # each demo run writes into its own timestamped folder: nothing to overwrite
        return None
    resume = resolve_resume(args, cfg)
    set_seed(cfg.train.seed)  # the same networks on every rank
    if args.eval_only or cfg.test.evaluate:
        return build.prepare_evaluation(cfg)
    job = build.prepare_training(cfg, resume=resume)
    if not resume:  # augmentations differ between ranks (a resume restores each rank's)
        distributed.seed_rank(cfg.train.seed)
    return job


def run(cfg: CfgNode, args: argparse.Namespace) -> int:
    from vkd_torchreid.engine import build
    from vkd_torchreid.utils.checkpoint import CheckpointError

    save_dir = cfg.data.save_dir
    demo = bool(cfg.get("demo") and cfg.demo.enabled)
    ctx = distributed.context()
    setup_logging()
    start = time.time()
    distributed.check_same_config(cfg.dump())
    error = None
    try:
        job = _prepare(cfg, args, demo)
    except (UserError, FileNotFoundError, KeyError, ValueError, CheckpointError) as exc:
        if not ctx.enabled:
            raise
        job, error = None, one_line(exc)
    distributed.agree(error)  # any rank's error stops every rank, before anything is written
    args.agreed = True  # from here on, an error is this rank's own: every rank reports its own
    # Data, checkpoints, architectures and class counts are checked: now the save dir.
    if ctx.is_main:
        attach_log_file(save_dir)
        with open(os.path.join(save_dir, CONFIG_FILE), "w", encoding="utf-8") as fh:
            fh.write(cfg.dump())
    if demo:
        from vkd_torchreid.apps.demo import run_demo

        run_demo(cfg)
        return 0
    results = job.run()
    if isinstance(results, build.RunResult):
        results = results.results
    logger.info("results: %s", results)
    logger.info("done in %.1f min; outputs in %s", (time.time() - start) / 60, save_dir)
    return 0


def _quiet_exit() -> int:
    """A non-zero rank's error exit: a moment first, so that the launcher, which stops every
    rank when one exits, does not stop rank 0 before it has printed the error."""
    time.sleep(2.0)
    return EXIT_ERROR


def _train(argv: Sequence[str], parser: Optional[argparse.ArgumentParser] = None,
           eval_only: bool = False) -> int:
    """``train`` (and ``eval``): one training run or evaluation; returns the exit code."""
    from vkd_torchreid.engine.base import NonFiniteLossError, StopTraining
    from vkd_torchreid.utils.checkpoint import CheckpointError

    args = add_arguments(parser or argparse.ArgumentParser()).parse_args(argv)
    args.eval_only = args.eval_only or eval_only
    main_rank = int(os.environ.get("RANK", "0") or 0) == 0
    stdout = sys.stdout
    try:
        if not main_rank:  # torchreid's progress lines: rank 0 alone prints
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (closed below)
            logging.getLogger("vkd_torchreid").setLevel(logging.WARNING)
        cfg = config_from_args(args)
        distributed.init(cfg.train.dist_backend, cfg.train.dist_timeout_s, cfg.use_gpu)
        return run(cfg, args)
    except StopTraining as exc:
        if main_rank:
            print(f"stopped ({exc}); resume with --resume", file=sys.stderr)
        return 130
    except distributed.DistributedError:
        return _quiet_exit()  # rank 0 prints the failing rank's error
    except (UserError, FileNotFoundError, KeyError, ValueError, CheckpointError,
            NonFiniteLossError) as exc:
        if main_rank:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return EXIT_ERROR
        if getattr(args, "agreed", False):
            print(f"error (rank {os.environ.get('RANK')}): {one_line(exc)}", file=sys.stderr)
        return _quiet_exit()
    finally:
        teardown_logging()
        distributed.shutdown()
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout


def _app(name: str, argv: Sequence[str]) -> int:
    """``vkd-reid NAME ...``: the ``main`` of :mod:`vkd_torchreid.apps.NAME`."""
    import importlib

    return importlib.import_module(f"vkd_torchreid.apps.{name}").main(argv)


#: The commands that are an app's ``main``: name -> (module under ``vkd_torchreid.apps``, help).
APP_COMMANDS = {
    "study": ("study", "the seeded, resumable study of the method's options"),
    "splits": ("splits", "a config over the ten splits of iLIDS-VID or PRID2011 (mean ± std)"),
    "search": ("search", "the matches of a query image in a gallery of tracklets (or a saved "
                         "index)"),
    "export": ("export", "export the image and tracklet models to ONNX, checked with "
                         "onnxruntime"),
    "download": ("download", "the released checkpoints, MARS and iLIDS-VID; where to get VeRi, "
                             "ATRW, Duke and PRID2011"),
    "compare": ("analysis.compare", "runs side by side: a table, a CSV and a bar chart of "
                                    "their results.json"),
    "explain": ("analysis.explain", "Grad-CAM of several networks on the same gallery frames "
                                    "(and foreground share)"),
    "camera-bias": ("analysis.camera_bias", "how much camera information the embeddings "
                                            "carry, network by network"),
    "gallery-curve": ("analysis.gallery_curve", "I2V top-1 and mAP as the frames per gallery "
                                                "tracklet grow"),
    "rank-list": ("analysis.rank_list", "the same queries' top-k of several networks, right "
                                        "and wrong marked"),
}

#: ``vkd-reid`` commands: name -> (entry point taking the remaining arguments, help).
COMMANDS = {
    "train": (lambda argv: _train(argv), "train the stage of the config (the default)"),
    "eval": (lambda argv: _train(argv, eval_only=True),
             "evaluate model.load_weights with the protocols of data.targets"),
    **{name: (functools.partial(_app, module), text)
       for name, (module, text) in APP_COMMANDS.items()},
}


def main(argv: Optional[Sequence[str]] = None,
         parser: Optional[argparse.ArgumentParser] = None) -> int:
    """``vkd-reid [COMMAND] ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help") and parser is None:
        print(__doc__.strip() + "\n\ncommands:\n" + "\n".join(
            f"  {name:13s} {text}" for name, (_, text) in COMMANDS.items()))
        return 0
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][0](argv[1:])
    return _train(argv, parser)
