"""Class-typical textures at patch scale, for worlds whose classes carry one.

A texture paints an object's pixels in two colours: its drawn colour and
`palette.pattern_colour` of it (a tint of dark colours, a shade of light ones), so the
colour a caption names still reads from the object, and no colour depends on the class.
Textures are laid out in image axes, not the object's: a rotated square keeps its
horizontal stripes, so orientation is part of what a patch sees. The period is a fixed
fraction of the image (`PERIOD_FRAC`, 8 px at 112 px), so one ViT patch of 14 px holds
one to two periods at every crop scale the training views use.
"""

from __future__ import annotations

import numpy as np

from tipsv2_core.data.palette import RGB, pattern_colour

PERIOD_FRAC = 1 / 14
TEXTURES = (
    "plain",
    "hstripes",
    "vstripes",
    "dstripes",
    "dots",
    "checks",
    "grid",
    "bricks",
    "zigzag",
    "rings",
)


def _on(
    texture: str, ys: np.ndarray, xs: np.ndarray, center: tuple[float, float], p: float
) -> np.ndarray:
    """[N] bool: which pixels take the second colour. ys, xs [N] absolute pixel indices."""
    y, x = ys.astype(np.float64), xs.astype(np.float64)
    half = p / 2
    if texture == "plain":
        return np.zeros(len(ys), bool)
    if texture == "hstripes":
        return np.floor(y / half) % 2 == 1
    if texture == "vstripes":
        return np.floor(x / half) % 2 == 1
    if texture == "dstripes":  # rising to the right
        return np.floor((x + y) / (half * 1.4)) % 2 == 1
    if texture == "dots":
        du, dv = x % p - half, y % p - half
        return du * du + dv * dv < (0.32 * p) ** 2
    if texture == "checks":
        return (np.floor(x / half) + np.floor(y / half)) % 2 == 1
    if texture == "grid":  # thin lines a period apart both ways
        w = max(1.0, 0.25 * p)
        return (x % p < w) | (y % p < w)
    if texture == "bricks":  # rows of bricks, every other row shifted by half a brick
        row = np.floor(y / half)
        mortar_h = y % half < max(1.0, 0.25 * half)
        mortar_v = (x + (row % 2) * p) % (2 * p) < max(1.0, 0.25 * half)
        return mortar_h | mortar_v
    if texture == "zigzag":  # horizontal chevrons
        tri = np.abs((x % p) - half)
        return np.floor((y + tri) / half) % 2 == 1
    if texture == "rings":  # concentric about the object's centre
        r = np.hypot(x - center[0], y - center[1])
        return np.floor(r / half) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; choose one of: {', '.join(TEXTURES)}")


def texture_colours(
    texture: str,
    rgb: RGB,
    ys: np.ndarray,
    xs: np.ndarray,
    center: tuple[float, float],
    image_size: int,
) -> np.ndarray:
    """[N, 3] uint8 colours of an object's pixels (ys, xs absolute) in `texture`."""
    on = _on(texture, ys, xs, center, PERIOD_FRAC * image_size)
    main = np.asarray(rgb, np.uint8)
    second = np.asarray(pattern_colour(rgb), np.uint8)
    return np.where(on[:, None], second, main)
