"""The synthetic world's look: people with independent front and back clothing, parts seen
from some views only, and cameras with their own light and background.

Every identity has a deterministic look (palette, stripe period and phase, an off-centre
logo), every camera/view changes it consistently (viewpoint flip, shift, colour cast,
background) and frames add a little jitter and noise: a small CNN can learn re-ID on it.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, *(k + 1024 for k in keys)])


#: A small shared palette: many identities share each colour, so one view is ambiguous.
_PALETTE = np.array([[200, 40, 40], [40, 150, 60], [50, 70, 200], [225, 195, 60],
                     [35, 35, 40], [215, 215, 215]], dtype=np.float32)
_LEGS = np.array([[40, 40, 60], [110, 85, 60], [150, 150, 155]], dtype=np.float32)
VIEWS = ("front", "back", "side")


def _identity(seed: int, pid: int, view: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Colours ``[h, w, 3]`` and mask ``[h, w]`` of identity ``pid`` seen from ``view``.

    An identity is a front and a back torso colour and pattern (stripes; a chest logo; a
    backpack), trousers and a subtle personal tint. Front and back are drawn independently
    from a small palette, so a single view matches several identities and only several views
    pin one down.
    """
    rng = _rng(seed, 1, pid)
    front, back = _PALETTE[rng.integers(0, len(_PALETTE), 2)]
    legs = _LEGS[rng.integers(0, len(_LEGS))]
    stripe_front, stripe_back, logo, backpack = rng.integers(0, 2, 4).astype(bool)
    tint = rng.uniform(-14, 14, 3).astype(np.float32)
    half = max(1, int(rng.integers(2, 5)) * max(1, h // 64))
    y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    width = 0.2 if view == 2 else 0.3  # seen from the side, the body is narrower
    head = ((y - 0.12) * h) ** 2 + ((x - 0.5) * w) ** 2 < (0.09 * h) ** 2
    torso = (y >= 0.2) & (y < 0.58) & (np.abs(x - 0.5) < width)
    legs_m = (y >= 0.58) & (y < 0.97) & (np.abs(x - 0.5) < width * 0.75) & ~(
        (np.abs(x - 0.5) < 0.04) & (y > 0.7))
    stripes = ((np.arange(h) // half) % 2 == 0)[:, None]  # rows; broadcast over columns
    img = np.zeros((h, w, 3), np.float32)
    img[head] = (224, 180, 150)
    img[legs_m] = legs
    if view == 2:  # side: front half of the torso in front colours, back half in back ones
        front_half = torso & (x < 0.5)
        back_half = torso & (x >= 0.5)
        img[front_half] = front
        img[back_half] = back
        if stripe_front:
            img[front_half & stripes] = 0.55 * front
        if stripe_back:
            img[back_half & stripes] = 0.55 * back
        mask = head | torso | legs_m
        if backpack:  # seen from the side, it sticks out behind the back
            pack = (y >= 0.24) & (y < 0.5) & (x >= 0.5 + width) & (x < 0.5 + width + 0.12)
            img[pack] = (90, 60, 30)
            mask = mask | pack
    else:
        colour, striped = (front, stripe_front) if view == 0 else (back, stripe_back)
        img[torso] = colour
        if striped:
            img[torso & stripes] = 0.55 * colour
        if view == 0 and logo:
            img[torso & (np.abs(x - 0.38) < 0.08) & (y < 0.36)] = 255.0 - colour
        if view == 1 and backpack:
            img[(y >= 0.24) & (y < 0.5) & (np.abs(x - 0.5) < 0.18)] = (90, 60, 30)
        mask = head | torso | legs_m
    img[mask] += tint
    return img, mask


def _background(seed: int, cam: int, h: int, w: int) -> np.ndarray:
    """Camera ``cam``'s scene: a vertical gradient with a few fixed blocks of clutter."""
    crng = _rng(seed, 2, cam)
    top, bottom = crng.integers(40, 216, size=(2, 3)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    bg = np.repeat(top * (1 - ramp) + bottom * ramp, w, axis=1)
    for _ in range(3):
        y0, x0 = int(crng.integers(0, h - h // 4)), int(crng.integers(0, w - w // 4))
        bg[y0:y0 + h // 4, x0:x0 + w // 4] = crng.integers(20, 236, 3)
    return bg


def render(seed: int, pid: int, cam: int, flip: bool, key: int, n: int, h: int,
           w: int, view: Optional[int] = None,
           with_masks: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """``n`` RGB frames ``[n, h, w, 3]`` of identity ``pid`` seen by camera ``cam``.

    What a camera sees depends on the viewpoint (``view``: 0 front, 1 back, 2 side; by
    default drawn per tracklet from ``key``, ``flip`` mirrors it), the camera's light (colour
    cast and brightness) and its background; frames jitter in position and brightness.
    With ``with_masks``, also the person's pixels of every frame (bool ``[n, h, w]``, moved
    with the frame): ``(frames, masks)``. The frames are the same either way.
    """
    if view is None:
        view = int(_rng(seed, 4, pid, cam, key).integers(0, len(VIEWS)))
    fg, mask = _identity(seed, pid, view, h, w)
    if flip:
        fg, mask = fg[:, ::-1], mask[:, ::-1]
    crng = _rng(seed, 5, cam)
    cast = crng.uniform(0.75, 1.25, 3).astype(np.float32)
    img = np.where(mask[..., None], fg * cast + np.float32(crng.uniform(-25, 25)),
                   _background(seed, cam, h, w))
    shift = int(crng.integers(-(w // 10), w // 10 + 1))

    rng = _rng(seed, 3, pid, cam, key)
    dys = rng.integers(-2, 3, n)
    dxs = rng.integers(-2, 3, n) + shift
    rows = np.clip(np.arange(h)[None, :] - dys[:, None], 0, h - 1)
    cols = np.clip(np.arange(w)[None, :] - dxs[:, None], 0, w - 1)
    out = img[rows[:, :, None], cols[:, None, :]]
    out += rng.uniform(-8, 8, (n, 1, 1, 1)).astype(np.float32)
    out += 4 * rng.standard_normal(out.shape, dtype=np.float32)
    frames = np.clip(out, 0, 255).astype(np.uint8)
    if with_masks:
        return frames, mask[rows[:, :, None], cols[:, None, :]]
    return frames
