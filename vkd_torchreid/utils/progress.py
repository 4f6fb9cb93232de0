"""Progress bars: on a terminal by default, never in a log file."""
from __future__ import annotations

import sys

#: Values of ``test.progress``: a bar when stderr is a terminal, always, never.
PROGRESS_MODES = ("auto", "always", "never")


def progress_enabled(mode: str) -> bool:
    """Whether to draw a progress bar for ``mode`` (one of :data:`PROGRESS_MODES`)."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress mode {mode!r}: expected one of {PROGRESS_MODES}")
    return mode == "always" or (mode == "auto" and sys.stderr.isatty())
