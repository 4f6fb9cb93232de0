"""A dataset's layout on disk: the strict checks every loader makes, and the one error they
raise, whose first line stands alone."""
from __future__ import annotations

import os


class LayoutError(FileNotFoundError):
    """A dataset folder that is not in its loader's layout.

    The message's first line stands alone (what is missing; once
    :meth:`VKDVideoDataset.load` added them, the dataset, ``data.root`` and the command that
    gets the dataset or says where to); the expected layout follows on the next lines.

    Attributes:
        problem: what is wrong (``missing folder <path>``).
        layout: the expected layout ('' if none).
    """

    def __init__(self, problem: str, layout: str = "", dataset: str = "",
                 root: str = "") -> None:
        first = problem
        if dataset:
            first += (f": data.root {root} does not hold {dataset} in the layout its loader reads "
                      f"(`vkd-reid download {dataset.removeprefix('vkd_')}` gets it or says "
                      "where to get it)")
        super().__init__(first + (f"\nexpected layout:\n{layout}" if layout else ""))
        self.problem, self.layout = problem, layout

    def of(self, dataset: str, root: str) -> LayoutError:
        """The same error naming ``dataset`` and the ``data.root`` it was looked for in."""
        return LayoutError(self.problem, self.layout, dataset, root)


def require_dir(path: str, layout: str) -> str:
    """Returns ``path`` if it is a folder, else :class:`LayoutError` naming it."""
    if not os.path.isdir(path):
        raise LayoutError(f"missing folder {path}", layout)
    return path


def require_file(path: str, layout: str) -> str:
    """Returns ``path`` if it is a file, else :class:`LayoutError` naming it."""
    if not os.path.isfile(path):
        raise LayoutError(f"missing file {path}", layout)
    return path


__all__ = ["LayoutError", "require_dir", "require_file"]
