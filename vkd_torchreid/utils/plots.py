"""Figures written to files: matplotlib on the Agg backend (no display needed), imported only
when a figure is drawn."""
from __future__ import annotations

import os
from typing import Any


def subplots(*args: Any, **kwargs: Any) -> tuple:
    """``matplotlib.pyplot.subplots`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: Any, path: str, dpi: int = 100) -> str:
    """Lays out ``fig``, writes it as PNG at ``path`` (its folder is created) and closes it."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


__all__ = ["save_figure", "subplots"]
