"""The ``vkd-reid`` command line (``tools/*.py`` are thin wrappers around it).

    vkd-reid [COMMAND] [--config-file X] [ARGUMENTS] [KEY VALUE ...]

COMMAND is one of :data:`COMMANDS`. Without one, the config decides: ``train`` (which also
evaluates with ``--eval-only`` or ``test.evaluate``), or ``demo`` for a config that declares
itself the demo's (``demo.enabled True``, as ``configs/demo.yaml``). ``--config-file`` takes a
path or the name of a packaged config (``vkd_mars_r50``); KEY VALUE overrides come last.
Errors a user can fix are one ``error:`` line on stderr and exit status 2.

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
from typing import Any, Optional, Sequence

from yacs.config import CfgNode

from vkd_torchreid.apps.common import (  # noqa: F401  (the names tests and users import)
    CONFIG_FILE,
    EXIT_ERROR,
    USER_ERRORS,
    UserError,
    add_config_arguments,
    command_parser,
    config_extensions,
    config_of,
    parse,
    report,
    start_run_folder,
)
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.logs import (  # noqa: F401  (LOG_FILE: the run log's name)
    LOG_FILE,
    one_line,
    setup_logging,
    teardown_logging,
)
from vkd_torchreid.utils.seeding import set_seed

logger = logging.getLogger("vkd_torchreid")

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``train`` and ``eval``."""
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate model.load_weights (ours, torchreid's or a released "
                             "reference experiment) without training")
    parser.add_argument("--resume", nargs="?", const="latest", default="",
                        help="resume from PATH, or from the latest checkpoint in the save dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow starting a new run in a save dir that holds checkpoints")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow legacy pickled checkpoints (torch.load weights_only=False)")
    return add_config_arguments(parser)


def config_from_args(args: argparse.Namespace) -> CfgNode:
    """Default config <- file <- --root/-s/-t <- --trust-checkpoint <- KEY VALUE overrides;
    validated."""
    return config_of(args, *(["model.trust_checkpoint", "True"] if args.trust_checkpoint
                             else []))


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


def _prepare(cfg: CfgNode, args: argparse.Namespace) -> Any:
    """The checked job; nothing written yet."""
    from vkd_torchreid.engine import build

    resume = resolve_resume(args, cfg)
    set_seed(cfg.train.seed)  # the same networks on every rank
    if args.eval_only or cfg.test.evaluate:
        return build.prepare_evaluation(cfg)
    job = build.prepare_training(cfg, resume=resume,
                                 resume_key="--resume" if args.resume else "model.resume")
    if not resume:  # augmentations differ between ranks (a resume restores each rank's)
        distributed.seed_rank(cfg.train.seed)
    return job


def run(cfg: CfgNode, args: argparse.Namespace) -> int:
    """Runs the checked job of ``train``/``eval`` (every rank); returns the exit code."""
    from vkd_torchreid.engine import build

    save_dir = cfg.data.save_dir
    ctx = distributed.context()
    setup_logging()
    start = time.time()
    distributed.check_same_config(cfg.dump())
    error = None
    try:
        job = _prepare(cfg, args)
    except USER_ERRORS as exc:
        if not ctx.enabled:
            raise
        job, error = None, one_line(exc)
    distributed.agree(error)  # any rank's error stops every rank, before anything is written
    args.agreed = True  # from here on, an error is this rank's own: every rank reports its own
    # Data, checkpoints, architectures and class counts are checked: now the save dir.
    if ctx.is_main:
        start_run_folder(cfg)
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


def _train(argv: Sequence[str], eval_only: bool = False) -> int:
    """``train`` (and ``eval``): one training run or evaluation; returns the exit code."""
    from vkd_torchreid.engine.base import StopTraining
    from vkd_torchreid.engine.loss_values import NonFiniteLossError

    main_rank = int(os.environ.get("RANK", "0") or 0) == 0
    stdout = sys.stdout
    args = None
    try:
        prog = "vkd-reid eval" if eval_only else "vkd-reid train"
        args = parse(add_arguments(command_parser(prog, TRAIN_HELP)), argv)
        args.eval_only = args.eval_only or eval_only
        if not main_rank:  # torchreid's progress lines: rank 0 alone prints
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (closed below)
            logging.getLogger("vkd_torchreid").setLevel(logging.WARNING)
        cfg = config_from_args(args)
        distributed.init(cfg.train.dist_backend, cfg.train.dist_timeout_s, cfg.use_gpu)
        return run(cfg, args)
    except StopTraining as exc:
        if main_rank:
            print(f"stopped ({exc}){'; resume with --resume' if exc.save else ''}",
                  file=sys.stderr)
        return 130
    except distributed.DistributedError:
        return _quiet_exit()  # rank 0 prints the failing rank's error
    except (*USER_ERRORS, NonFiniteLossError) as exc:
        if main_rank:
            return report(exc)
        if getattr(args, "agreed", False):
            print(f"error (rank {os.environ.get('RANK')}): {one_line(exc)}", file=sys.stderr)
        return _quiet_exit()
    except RuntimeError as exc:  # a collective that timed out or lost a rank: one line each
        line = distributed.collective_failure(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        teardown_logging()
        distributed.shutdown()
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout


TRAIN_HELP = """Train the stage of the config (vkd.stage: teacher or student), or evaluate
model.load_weights with --eval-only (or test.evaluate True).

    vkd-reid train --config-file configs/teacher_mars_r50.yaml --root reid-data
    vkd-reid train --config-file vkd_mars_r50 --root reid-data \\
        vkd.teacher_checkpoint log/teacher_mars_r50/model/latest.pth.tar
    vkd-reid eval --config-file vkd_mars_r50 --root reid-data model.load_weights EXPERIMENT
"""


def _app(name: str, argv: Sequence[str]) -> int:
    """``vkd-reid NAME ...``: the ``main`` of :mod:`vkd_torchreid.apps.NAME`."""
    import importlib

    return importlib.import_module(f"vkd_torchreid.apps.{name}").main(list(argv))


#: The commands that are an app's ``main``: name -> (module under ``vkd_torchreid.apps``, help).
APP_COMMANDS = {
    "demo": ("demo", "the CPU demo: a synthetic world, a teacher, a VKD student, a table "
                     "and the analyses"),
    "study": ("study", "the seeded, resumable study of the method's options"),
    "splits": ("splits", "a config over the ten splits of iLIDS-VID or PRID2011 (mean ± std)"),
    "check-dataset": ("check_dataset", "parse data.sources/targets at data.root and check "
                                       "that every image exists and decodes"),
    "make-synthetic": ("make_synthetic", "write tiny synthetic datasets in the real on-disk "
                                         "layouts"),
    "model-info": ("model_info", "parameters, FLOPs, embedding and feature-map size of "
                                 "model.name"),
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
    "benchmark": ("benchmark", "time the pipeline's parts, each next to a baseline measured "
                               "in the same run"),
}

#: ``vkd-reid`` commands: name -> (entry point taking the remaining arguments, help).
COMMANDS = {
    "train": (_train, "train the stage of the config (the default)"),
    "eval": (functools.partial(_train, eval_only=True),
             "evaluate model.load_weights with the protocols of data.targets"),
    **{name: (functools.partial(_app, module), text)
       for name, (module, text) in APP_COMMANDS.items()},
}


def implied_command(argv: Sequence[str]) -> str:
    """The command of a command line without one: ``demo`` when its config declares itself the
    demo's (``demo.enabled True``, in the file or as an override), else ``train`` (which also
    reports a config that cannot be read)."""
    if "-h" in argv or "--help" in argv:
        return "train"
    try:
        args = parse(add_arguments(command_parser("vkd-reid", "")), argv)
        return "demo" if config_from_args(args).demo.enabled else "train"
    except USER_ERRORS:  # train reports it
        return "train"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vkd-reid [COMMAND] ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\ncommands:\n" + "\n".join(
            f"  {name:15s} {text}" for name, (_, text) in COMMANDS.items()) +
            "\n\nvkd-reid COMMAND --help: the arguments of a command.")
        return 0
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][0](argv[1:])
    return COMMANDS[implied_command(argv)][0](argv)
