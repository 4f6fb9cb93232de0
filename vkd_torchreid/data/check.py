"""Checks a dataset root: parse it, then confirm every referenced image exists and decodes."""
from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Iterable, List, Optional, Tuple

from vkd_torchreid.data.base import Splits
from vkd_torchreid.data.io import read_image
from vkd_torchreid.data.registry import dataset_class

COLUMNS = ("split", "ids", "items", "images", "cameras")


def image_paths(splits: Splits) -> List[str]:
    """Every image file the splits reference, once each, in first-seen order."""
    seen: dict = {}
    for name in ("train", "query", "gallery"):
        for paths, _, _ in getattr(splits, name):
            seen.update(dict.fromkeys(paths))
    for name in ("query_img", "gallery_img"):
        seen.update(dict.fromkeys(p for p, _, _ in getattr(splits, name)))
    return list(seen)


def _problem(path: str, decode: bool) -> Optional[str]:
    if not os.path.isfile(path):
        return f"missing image {path}"
    if decode:
        try:
            read_image(path)
        except Exception as exc:  # CorruptImageError and anything else: report, go on
            return str(exc) if path in str(exc) else f"{path}: {exc}"
    return None


def check_images(paths: Iterable[str], decode: bool = True,
                 workers: int = 0) -> List[str]:
    """Problems (one string naming the file each) of ``paths``; OpenCV decodes in threads."""
    paths = list(paths)
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: _problem(p, decode), paths, chunksize=64)
        return [r for r in results if r is not None]


def check_dataset(name: str, root: str, decode: bool = True,
                  **options: Any) -> Tuple[Splits, List[str]]:
    """Parses dataset ``name`` under ``root`` and checks every image it references.

    Args:
        name: a registered dataset name (``vkd_mars``, ``vkd_duke``, ``vkd_veri``, ``vkd_atrw``,
            ``vkd_ilidsvid``, ``vkd_prid2011``).
        root: the parent folder of the dataset folder.
        decode: also decode every image (slower); otherwise only check that files exist.
        **options: dataset options (``mars_query_in_gallery``, ``atrw_views``,
            ``duke_tracklets``, ``veri_query_track``, ``veri_image_gallery``, ``split_id``).

    Returns:
        (splits, problems): problems is empty for a healthy dataset.

    Raises:
        ValueError: unknown dataset or option, or a malformed annotation file.
        FileNotFoundError: the dataset folder or an annotation file is missing.
    """
    cls = dataset_class(name)
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        raise ValueError(f"{name} has no option(s) {unknown}; its options: {list(cls.OPTIONS)}")
    splits = cls.load(root, **options)
    return splits, check_images(image_paths(splits), decode=decode)


def format_statistics(splits: Splits) -> str:
    """A small aligned table of ``splits.statistics()``."""
    rows = [[str(r[c]) for c in COLUMNS] for r in splits.statistics()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]

    def line(cells: List[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    p = splits.protocol
    protocol = (f"protocol: {', '.join(p.modes)}; junk: {p.junk}; "
                f"query tracklets in gallery: {'yes' if p.query_in_gallery else 'no'}")
    return "\n".join([line(list(COLUMNS)), line(["-" * w for w in widths]),
                      *(line(r) for r in rows), protocol])
