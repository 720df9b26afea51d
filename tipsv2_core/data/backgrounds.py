"""Scene backgrounds: flat, linear gradient, stripes, noise texture and checkerboard.

Each is drawn with a few vectorised numpy operations on the whole [S, S, 3] image and
comes with a structured description (kind, colour names, orientation) that the caption
writer turns into words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tipsv2_core.data.palette import BACKGROUND_COLOURS, jitter
from tipsv2_core.data.rand import Dice, cumulative

KINDS = ("plain", "gradient", "stripes", "noise", "checker")
_KIND_CUM = cumulative((0.2, 0.25, 0.2, 0.15, 0.2))
_LIGHT = (
    "white",
    "light gray",
    "beige",
    "cream",
    "pale blue",
    "pale green",
    "pale pink",
    "lavender",
)
_DARK = ("dark gray", "navy", "dark green")


@dataclass(frozen=True)
class Background:
    """What a background looks like, in words the captions can use."""

    kind: str  # one of KINDS
    colours: tuple[str, ...]  # BACKGROUND_COLOURS names, 1 or 2
    orientation: str = ""  # "horizontal" | "vertical" | "diagonal" for gradients, stripes

    def describe(self) -> str:
        """A plain English description, e.g. "vertical pale blue and white stripes"."""
        c = self.colours
        if self.kind == "plain":
            return f"a plain {c[0]} background"
        if self.kind == "gradient":
            return f"a {self.orientation} gradient from {c[0]} to {c[1]}"
        if self.kind == "stripes":
            return f"{self.orientation} {c[0]} and {c[1]} stripes"
        if self.kind == "noise":
            return f"a grainy {c[0]} texture"
        return f"a {c[0]} and {c[1]} checkerboard"


def _two_colours(rng: Dice) -> tuple[str, str]:
    """Two different background colours, usually both light (sometimes one dark)."""
    first = rng.pick(_LIGHT if rng.random() < 0.8 else _DARK)
    pool = [c for c in (_LIGHT if rng.random() < 0.85 else _DARK) if c != first]
    return first, rng.pick(pool)


def _orientation(angle: float) -> str:
    a = angle % 180.0
    if a < 20 or a > 160:
        return "horizontal"  # colour changes along x: a left-to-right gradient
    if 70 < a < 110:
        return "vertical"
    return "diagonal"


def _coords(size: int, angle: float) -> np.ndarray:
    """[S, S] float32 position along direction `angle` (degrees), in pixels from 0."""
    a = np.deg2rad(angle)
    r = np.arange(size, dtype=np.float32)
    u = r[None, :] * np.float32(np.cos(a)) + r[:, None] * np.float32(np.sin(a))
    return u - u.min()


def _paint(index: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """[S, S, 3] uint8 image of `palette[index]` (index [S, S] uint8, palette [K, 3] uint8).

    PIL's palette conversion is several times faster than numpy fancy indexing with a
    3-wide last axis.
    """
    h, w = index.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(index, np.uint8).tobytes())
    img.putpalette(np.ascontiguousarray(palette, np.uint8).tobytes())
    return np.array(img.convert("RGB"))


def _parity(u: np.ndarray, cell: float) -> np.ndarray:
    """[S, S] uint8: 0/1 alternating every `cell` pixels along u (u >= 0)."""
    return ((u * np.float32(1.0 / cell)).astype(np.int32) & 1).astype(np.uint8)


def draw_background(
    rng: Dice,
    size: int,
    kinds: tuple[str, ...] = KINDS,
    cum_weights: tuple[float, ...] = _KIND_CUM,
) -> tuple[np.ndarray, Background]:
    """A random background of one of `kinds` (chosen by cumulative weights `cum_weights`,
    see rand.cumulative): (image [S, S, 3] uint8, its description)."""
    kind = rng.pick_weighted(kinds, cum_weights)
    if kind == "plain":
        name = rng.pick(_LIGHT + _DARK)
        rgb = jitter(BACKGROUND_COLOURS[name], rng, 5)
        return np.array(Image.new("RGB", (size, size), rgb)), Background(kind, (name,))
    if kind == "noise":
        name = rng.pick(_LIGHT + _DARK)
        base = np.asarray(jitter(BACKGROUND_COLOURS[name], rng, 5), np.int32)
        # Low-frequency blotches (a 6×6 grid upsampled) plus fine grain, as a luminance
        # offset index (128 = none) into a palette of shades of the base colour.
        amp = rng.uniform(14, 26)
        grid = 128.0 + (rng.rng.integers(0, 256, size=(6, 6)) - 128.0) * (amp / 128.0)
        low = Image.fromarray(np.rint(grid).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        fine = rng.rng.integers(0, 21, size=(size, size), dtype=np.uint8)
        index = (np.asarray(low, np.int16) + fine - 10).clip(0, 255).astype(np.uint8)
        offsets = np.arange(256, dtype=np.int32)[:, None] - 128
        return _paint(index, np.clip(base + offsets, 0, 255)), Background(kind, (name,))

    c1, c2 = _two_colours(rng)
    pair = np.array([jitter(BACKGROUND_COLOURS[c], rng, 5) for c in (c1, c2)], np.uint8)
    if kind == "gradient":
        angle = rng.uniform(0, 360)
        u = _coords(size, angle)
        index = np.rint(u * np.float32(255.0 / max(float(u.max()), 1.0))).astype(np.uint8)
        t = np.arange(256, dtype=np.float64)[:, None] / 255.0
        rgb1, rgb2 = pair.astype(np.float64)
        palette = np.rint(rgb1 + (rgb2 - rgb1) * t)
        return _paint(index, palette), Background(kind, (c1, c2), _orientation(angle))
    if kind == "stripes":
        angle = rng.pick((0.0, 45.0, 90.0, 135.0)) + rng.uniform(-8, 8)
        period = rng.uniform(size / 16, size / 6)
        # Stripes run perpendicular to the direction their colour changes along.
        index = _parity(_coords(size, angle), period / 2)
        return _paint(index, pair), Background(kind, (c1, c2), _orientation(angle + 90))
    cell = rng.uniform(size / 12, size / 5)
    angle = rng.pick((0.0, 45.0))
    index = _parity(_coords(size, angle), cell) ^ _parity(_coords(size, angle + 90), cell)
    return _paint(index, pair), Background("checker", (c1, c2))
