"""Ranked-list pictures: a query and its top-k gallery items in one row, as torchreid draws
them (green border: same identity, red: another identity, grey: unknown), with the rank and
the score under each item.

The renderer works on decoded images (``uint8 [H, W, 3]`` RGB) so that every caller (the
Evaluator's ``test.visrank``, the search command, the analysis tools) reads its images its own
way and draws them the same way.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

GREEN = (0, 170, 0)
RED = (210, 0, 0)
GREY = (128, 128, 128)
BLUE = (0, 80, 220)
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC


@dataclasses.dataclass(frozen=True)
class RankedItem:
    """One gallery item of a ranked list.

    Attributes:
        image: ``uint8 [H, W, 3]`` RGB (a tracklet's first frame, or an image).
        score: its similarity (higher is closer) or distance; printed as given.
        match: True (same identity as the query), False (another identity), None (unknown).
        label: a short caption (an identity, a file name), optional.
    """

    image: np.ndarray
    score: float
    match: Optional[bool] = None
    label: str = ""


def render_ranked_list(query: np.ndarray, items: Sequence[RankedItem], height: int = 128,
                       width: int = 64, border: int = 4, gap: int = 6,
                       query_label: str = "") -> np.ndarray:
    """One picture ``uint8 [H', W', 3]``: the query (blue border), a gap, then the items in
    rank order, each resized to ``height x width`` with a border coloured by ``match`` and
    ``#rank score`` written under it."""
    caption = 14
    cell_w = width + 2 * border
    cell_h = height + 2 * border + caption
    canvas = Image.new("RGB", (cell_w * (1 + len(items)) + gap * (len(items) + 1), cell_h),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def paste(img: np.ndarray, x: int, colour: tuple, text: str) -> None:
        draw.rectangle([x, 0, x + cell_w - 1, height + 2 * border - 1], fill=colour)
        tile = Image.fromarray(np.ascontiguousarray(img)).convert("RGB").resize(
            (width, height), _BICUBIC)
        canvas.paste(tile, (x + border, border))
        draw.text((x + 1, height + 2 * border), text, fill=(0, 0, 0))

    paste(query, 0, BLUE, query_label or "query")
    for rank, item in enumerate(items, start=1):
        colour = GREY if item.match is None else GREEN if item.match else RED
        text = f"#{rank} {item.score:.3f}" + (f" {item.label}" if item.label else "")
        paste(item.image, (cell_w + gap) * rank + gap, colour, text)
    return np.asarray(canvas)


def save_ranked_list(path: str, query: np.ndarray, items: Sequence[RankedItem],
                     **kwargs: int) -> str:
    """Renders a ranked list and writes it as PNG at ``path`` (its folder is created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(render_ranked_list(query, items, **kwargs)).save(path)
    return path


def top_k(distmat: np.ndarray, row: int, k: int, exclude: Optional[np.ndarray] = None
          ) -> List[int]:
    """Gallery columns of the ``k`` smallest distances of ``distmat[row]`` (ties by column),
    skipping the columns where ``exclude`` (a boolean row) is True."""
    d = np.asarray(distmat[row], dtype=np.float64)
    if exclude is not None:
        d = np.where(exclude, np.inf, d)
    k = min(k, int(np.isfinite(d).sum()))
    cand = np.argpartition(d, k - 1)[:k] if 0 < k < d.size else np.arange(d.size)[:k]
    return [int(c) for c in cand[np.lexsort((cand, d[cand]))]]
