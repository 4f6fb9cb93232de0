"""Logging of a run: to stdout, and to ``<save_dir>/train.log`` once the run has checked its
inputs (records are held in memory until then), and one-line error messages."""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys

LOG_FILE = "train.log"
_LOG_BUFFER = 100_000  # records held before the log file exists


def teardown_logging() -> None:
    """Removes and closes the handlers :func:`setup_logging` added (safe to call twice)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_vkd", False):
            root.removeHandler(handler)
            handler.close()


def _add_handler(handler: logging.Handler) -> None:
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    handler._vkd = True  # type: ignore[attr-defined]
    logging.getLogger().addHandler(handler)


def setup_logging(save_dir: str = "") -> None:
    """Logs to stdout, and to ``<save_dir>/train.log`` until :func:`teardown_logging`.

    Without ``save_dir`` the records are held in memory until :func:`attach_log_file`: a run
    checks its data and checkpoints before it writes anything into its save dir, and its log
    file still holds what happened meanwhile.
    """
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    teardown_logging()
    _add_handler(logging.StreamHandler(sys.stdout))
    if save_dir:
        attach_log_file(save_dir)
    else:
        _add_handler(logging.handlers.MemoryHandler(_LOG_BUFFER, flushLevel=logging.CRITICAL + 1))


def attach_log_file(save_dir: str) -> None:
    """Starts ``<save_dir>/train.log`` with the records held since :func:`setup_logging`."""
    os.makedirs(save_dir, exist_ok=True)
    root = logging.getLogger()
    buffers = [h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)
               and getattr(h, "_vkd", False)]
    file_handler = logging.FileHandler(os.path.join(save_dir, LOG_FILE), encoding="utf-8")
    _add_handler(file_handler)
    for buffer in buffers:
        buffer.setTarget(file_handler)
        root.removeHandler(buffer)
        buffer.close()  # flushes the held records into the file


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (a KeyError's without its quotes)."""
    msg = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    return msg.splitlines()[0] if msg else type(exc).__name__
