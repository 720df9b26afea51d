"""Named colours of objects and backgrounds, jitter, and the contrast rule between them.

Object colours are saturated or extreme (black, white); background colours are pale or
dark muted tones. An object colour is only used on a background whose colours all lie at
least `MIN_CONTRAST` away (Euclidean RGB distance), so every object stays visible.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tipsv2_core.data.rand import Dice

RGB = tuple[int, int, int]

OBJECT_COLOURS: dict[str, RGB] = {
    "red": (220, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 25),
    "green": (45, 165, 60),
    "blue": (35, 85, 215),
    "purple": (130, 55, 185),
    "pink": (240, 105, 180),
    "brown": (125, 75, 35),
    "black": (20, 20, 20),
    "white": (248, 248, 248),
    "gray": (128, 128, 128),
    "cyan": (30, 200, 215),
}

BACKGROUND_COLOURS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "light gray": (205, 205, 205),
    "beige": (225, 210, 180),
    "cream": (250, 244, 222),
    "pale blue": (188, 212, 240),
    "pale green": (200, 230, 192),
    "pale pink": (245, 208, 214),
    "lavender": (214, 204, 240),
    "dark gray": (62, 62, 62),
    "navy": (24, 34, 82),
    "dark green": (28, 70, 44),
}

MIN_CONTRAST = 100.0
JITTER = 10  # ± per channel for objects; backgrounds get half


def distance(a: RGB, b: RGB) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


@lru_cache(maxsize=256)
def allowed_object_colours(background_colours: tuple[str, ...]) -> tuple[str, ...]:
    """Object colour names that contrast with every named background colour given."""
    bgs = [BACKGROUND_COLOURS[c] for c in background_colours]
    return tuple(
        name
        for name, rgb in OBJECT_COLOURS.items()
        if all(distance(rgb, bg) >= MIN_CONTRAST for bg in bgs)
    )


def jitter(rgb: RGB, rng: Dice, amount: int = JITTER) -> RGB:
    """The colour with each channel moved by a uniform integer in [-amount, amount]."""
    d = [rng.integer(2 * amount + 1) - amount for _ in range(3)]
    return (
        min(255, max(0, rgb[0] + d[0])),
        min(255, max(0, rgb[1] + d[1])),
        min(255, max(0, rgb[2] + d[2])),
    )


def pattern_colour(rgb: RGB) -> RGB:
    """The second colour of a striped/dotted/checkered fill: a tint of dark colours and a
    shade of light ones, so the pattern shows and the object still reads as its colour."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    target, amount = (255.0, 0.6) if lum < 140 else (0.0, 0.5)
    return tuple(round(c + (target - c) * amount) for c in rgb)  # type: ignore[return-value]
