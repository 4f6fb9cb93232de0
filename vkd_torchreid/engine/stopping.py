"""Stopping a run on SIGINT/SIGTERM: the first signal asks the run to stop at its next batch
boundary (after writing the latest checkpoint), the same interrupt delivered again shortly after
counts once, and a later second signal stops it at once, writing nothing."""
from __future__ import annotations

import contextlib
import signal
import time
from typing import Any, Callable, Dict

#: A stop signal this soon after the first is the same interrupt delivered twice (torchrun
#: forwards the Ctrl-C the terminal already sent to every rank), not a second request.
REPEAT_SIGNAL_S = 2.0
#: The signals that stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopTraining(KeyboardInterrupt):
    """Raised at a batch boundary after SIGINT/SIGTERM, once a checkpoint is written; with
    ``save=False`` (a second signal, or a signal before training started: during the teacher
    cache build) nothing is written.

    Attributes:
        save: whether the run writes the latest checkpoint before it stops.
    """

    def __init__(self, reason: str, save: bool = True) -> None:
        super().__init__(reason)
        self.save = save


def install_stop_handlers(on_first: Callable[[int], None]) -> Dict[int, Any]:
    """Handles SIGINT/SIGTERM until :func:`restore_handlers`: the first calls
    ``on_first(signum)``; one :data:`REPEAT_SIGNAL_S` or more later raises
    ``StopTraining(save=False)`` where the program is. Outside the main thread signals cannot
    be caught: nothing is installed. Returns the previous handlers."""
    first = [0.0]  # when the first signal came; 0: none yet

    def handler(signum: int, _frame: Any) -> None:
        if not first[0]:
            first[0] = time.monotonic()
            on_first(signum)
        elif time.monotonic() - first[0] >= REPEAT_SIGNAL_S:  # a second request: at once
            raise StopTraining(f"signal {signum} again: stopped at once without saving",
                               save=False)

    previous = {}
    for sig in STOP_SIGNALS:
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, handler)
    return previous


def restore_handlers(previous: Dict[int, Any]) -> None:
    """Puts back what :func:`install_stop_handlers` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


__all__ = ["REPEAT_SIGNAL_S", "STOP_SIGNALS", "StopTraining", "install_stop_handlers",
           "restore_handlers"]
