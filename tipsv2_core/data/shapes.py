"""Every object class drawn as polygons, and their non-antialiased rasterisation.

A shape is a list of parts `(points [N, 2] float64, add)` in unit coordinates (x right,
y down, the add-parts' bounding box centred on 0 with half-extent 1). Parts are drawn in
order onto one mask: `add=True` sets pixels, `add=False` cuts them (holes such as the
ring's centre, the fish's eye or the car's windows show what lies behind the object).

`rasterize` turns a placed shape into a boolean mask with PIL's polygon fill (no
antialiasing), and the synthetic scene uses that one mask for the image and the label
map alike, so the two agree pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Part = tuple[np.ndarray, bool]


@dataclass(frozen=True)
class ShapeSpec:
    """One class's drawing: its parts and how it may be turned without looking wrong."""

    name: str
    parts: tuple[Part, ...]
    max_rotation: float  # degrees either way
    flippable: bool  # may be mirrored left-right (a car facing left or right)


def _ellipse(cx: float, cy: float, rx: float, ry: float | None = None, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + (rx if ry is None else ry) * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _poly(*pts: tuple[float, float]) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64)


def _regular(n: int, r: float = 1.0, phase: float = -90.0) -> np.ndarray:
    t = np.deg2rad(phase + 360.0 * np.arange(n) / n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _star(n: int, r_out: float, r_in: float) -> np.ndarray:
    t = np.deg2rad(-90.0 + 180.0 * np.arange(2 * n) / n)
    r = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _rotated(points: np.ndarray, degrees: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array([cx, cy])
    return (points - centre) @ rot.T + centre


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, width: float) -> np.ndarray:
    """A thick circular arc from angle a0 to a1 (degrees, y down) as one polygon."""
    t = np.deg2rad(np.linspace(a0, a1, 16))
    ro, ri = r + width / 2, r - width / 2
    outer = np.stack([cx + ro * np.cos(t), cy + ro * np.sin(t)], 1)
    inner = np.stack([cx + ri * np.cos(t), cy + ri * np.sin(t)], 1)[::-1]
    return np.concatenate([outer, inner])


def _heart(n: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], 1) / 16.0


def _parts() -> dict[str, list[Part]]:
    add, cut = True, False
    petals = [(_rotated(_ellipse(0, -0.55, 0.28, 0.45), a), add) for a in range(0, 360, 60)]
    return {
        "circle": [(_ellipse(0, 0, 1), add)],
        "square": [(_rect(-1, -1, 1, 1), add)],
        "triangle": [(_regular(3), add)],
        "star": [(_star(5, 1.0, 0.42), add)],
        "heart": [(_heart(), add)],
        "cross": [(_rect(-1, -0.3, 1, 0.3), add), (_rect(-0.3, -1, 0.3, 1), add)],
        "hexagon": [(_regular(6, phase=0.0), add)],
        "diamond": [(_poly((0, -1), (0.62, 0), (0, 1), (-0.62, 0)), add)],
        "crescent": [(_ellipse(0, 0, 1), add), (_ellipse(0.45, -0.28, 0.82), cut)],
        "ring": [(_ellipse(0, 0, 1), add), (_ellipse(0, 0, 0.58), cut)],
        "arrow": [
            (
                _poly(
                    (-1, -0.2),
                    (0.2, -0.2),
                    (0.2, -0.55),
                    (1, 0),
                    (0.2, 0.55),
                    (0.2, 0.2),
                    (-1, 0.2),
                ),
                add,
            ),
        ],
        "lightning bolt": [
            (
                _poly(
                    (0.1, -1),
                    (-0.45, 0.12),
                    (0.0, 0.12),
                    (-0.25, 1),
                    (0.5, -0.16),
                    (0.05, -0.16),
                    (0.45, -1),
                ),
                add,
            ),
        ],
        "house": [
            (_rect(0.35, -0.85, 0.6, -0.35), add),  # chimney
            (_poly((-0.95, -0.05), (0, -1), (0.95, -0.05)), add),  # roof
            (_rect(-0.7, -0.1, 0.7, 1), add),
            (_rect(-0.15, 0.45, 0.15, 1.01), cut),  # door
        ],
        "tree": [
            (_rect(-0.12, 0.55, 0.12, 1), add),
            (_poly((0, -1), (0.5, -0.3), (-0.5, -0.3)), add),
            (_poly((0, -0.65), (0.68, 0.12), (-0.68, 0.12)), add),
            (_poly((0, -0.25), (0.85, 0.6), (-0.85, 0.6)), add),
        ],
        "car": [
            (_poly((-0.55, -0.05), (-0.32, -0.5), (0.35, -0.5), (0.62, -0.05)), add),
            (_rect(-1, -0.08, 1, 0.42), add),
            (_ellipse(-0.55, 0.42, 0.24), add),
            (_ellipse(0.55, 0.42, 0.24), add),
            (_poly((-0.4, -0.12), (-0.26, -0.4), (-0.04, -0.4), (-0.04, -0.12)), cut),
            (_poly((0.05, -0.12), (0.05, -0.4), (0.3, -0.4), (0.47, -0.12)), cut),
        ],
        "fish": [
            (_ellipse(-0.2, 0, 0.68, 0.42), add),
            (_poly((0.3, 0), (0.95, -0.48), (0.95, 0.48)), add),
            (_ellipse(-0.55, -0.1, 0.08), cut),  # eye
        ],
        "cat": [
            (_ellipse(0, 0.35, 0.5, 0.62), add),
            (_ellipse(0, -0.42, 0.36), add),
            (_poly((-0.34, -0.55), (-0.3, -1.0), (-0.06, -0.74)), add),
            (_poly((0.34, -0.55), (0.3, -1.0), (0.06, -0.74)), add),
            (_arc(0.78, 0.62, 0.3, 170, 320, 0.13), add),  # tail
        ],
        "bird": [
            (_ellipse(0.05, 0.1, 0.6, 0.36), add),
            (_ellipse(-0.52, -0.3, 0.28), add),
            (_poly((-0.76, -0.4), (-1.05, -0.26), (-0.76, -0.2)), add),  # beak
            (_poly((0.5, 0.0), (1.0, -0.32), (1.0, 0.16)), add),  # tail
            (_poly((-0.15, 0.0), (0.45, -0.62), (0.4, 0.05)), add),  # wing
            (_rect(-0.1, 0.4, -0.02, 0.75), add),
            (_rect(0.12, 0.4, 0.2, 0.75), add),
            (_ellipse(-0.58, -0.35, 0.06), cut),  # eye
        ],
        "umbrella": [
            (_ellipse(0, -0.15, 1, 0.75)[24:], add),  # upper half (angles π..2π)
            (_ellipse(-0.67, -0.15, 0.33, 0.12), cut),
            (_ellipse(0.0, -0.15, 0.33, 0.12), cut),
            (_ellipse(0.67, -0.15, 0.33, 0.12), cut),
            (_rect(-0.05, -0.2, 0.05, 0.75), add),
            (_arc(-0.17, 0.75, 0.17, 0, 180, 0.1), add),  # handle
        ],
        "key": [
            (_ellipse(-0.6, 0, 0.4), add),
            (_ellipse(-0.6, 0, 0.17), cut),
            (_rect(-0.24, -0.08, 1, 0.08), add),
            (_rect(0.55, 0.06, 0.7, 0.34), add),
            (_rect(0.8, 0.06, 0.95, 0.28), add),
        ],
        "cup": [
            (_ellipse(0.5, 0.0, 0.36), add),
            (_ellipse(0.5, 0.0, 0.2), cut),
            (_poly((-0.7, -0.7), (0.6, -0.7), (0.5, 0.75), (-0.6, 0.75)), add),
            (_rect(-0.9, 0.75, 0.8, 0.92), add),  # saucer
        ],
        "boat": [
            (_poly((-1, 0.35), (1, 0.35), (0.7, 0.85), (-0.7, 0.85)), add),
            (_rect(-0.04, -1, 0.04, 0.36), add),
            (_poly((0.1, -0.95), (0.1, 0.25), (0.75, 0.25)), add),
            (_poly((-0.1, -0.7), (-0.1, 0.25), (-0.6, 0.25)), add),
        ],
        "cloud": [
            (_ellipse(-0.5, 0.1, 0.42), add),
            (_ellipse(0.05, -0.15, 0.55), add),
            (_ellipse(0.55, 0.12, 0.4), add),
            (_rect(-0.5, 0.1, 0.55, 0.52), add),
        ],
        "flower": [*petals, (_ellipse(0, 0, 0.32), add)],
        "mushroom": [
            (_ellipse(0, -0.1, 1, 0.8)[24:], add),  # cap
            (_poly((-0.25, -0.12), (0.25, -0.12), (0.32, 0.9), (-0.32, 0.9)), add),
        ],
        "butterfly": [
            (_rotated(_ellipse(-0.5, -0.35, 0.5, 0.38), -25, -0.5, -0.35), add),
            (_rotated(_ellipse(0.5, -0.35, 0.5, 0.38), 25, 0.5, -0.35), add),
            (_rotated(_ellipse(-0.38, 0.42, 0.36, 0.28), 30, -0.38, 0.42), add),
            (_rotated(_ellipse(0.38, 0.42, 0.36, 0.28), -30, 0.38, 0.42), add),
            (_ellipse(0, 0.05, 0.09, 0.7), add),
        ],
    }


def _normalise(parts: list[Part]) -> tuple[Part, ...]:
    """Centres the add-parts' bounding box on 0 and scales its half-extent to 1."""
    pts = np.concatenate([p for p, add in parts if add])
    lo, hi = pts.min(0), pts.max(0)
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    return tuple(((p - centre) / half, add) for p, add in parts)


_SYMMETRIC = {"circle", "square", "triangle", "star", "hexagon", "diamond", "ring", "cross"}
_FREE = {"arrow", "crescent", "lightning bolt", "heart"}  # look right at any angle
_NO_FLIP = {"house", "tree", "cloud", "flower", "mushroom", "butterfly"} | _SYMMETRIC


def _specs() -> dict[str, ShapeSpec]:
    specs = {}
    for name, parts in _parts().items():
        rot = 180.0 if name in _SYMMETRIC else 60.0 if name in _FREE else 18.0
        specs[name] = ShapeSpec(name, _normalise(parts), rot, name not in _NO_FLIP)
    return specs


SHAPES: dict[str, ShapeSpec] = _specs()


def place(spec: ShapeSpec, cx: float, cy: float, radius: float, rotation: float, flip: bool):
    """The shape's parts in pixel coordinates: scaled to `radius`, turned, mirrored, moved.

    Returns a list of `(points [N, 2], add)`.
    """
    a = np.deg2rad(rotation)
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * radius
    if flip:
        m = m @ np.diag([-1.0, 1.0])
    offset = np.array([cx, cy])
    return [(p @ m.T + offset, add) for p, add in spec.parts]


@dataclass
class Raster:
    """A rasterised object: `mask [h, w] bool` whose top-left pixel is at (x0, y0)."""

    mask: np.ndarray
    x0: int
    y0: int


def rasterize(parts: list[Part], stroke: int = 0) -> Raster:
    """Fills placed parts (pixel coordinates) without antialiasing.

    With `stroke > 0` only a band `stroke` pixels wide inside the silhouette's edges is
    kept (the "outline" fill), computed by eroding the filled mask.
    """
    pts = np.concatenate([p for p, add in parts if add])
    pad = stroke + 2
    x0 = int(np.floor(pts[:, 0].min())) - pad
    y0 = int(np.floor(pts[:, 1].min())) - pad
    w = int(np.ceil(pts[:, 0].max())) + pad + 1 - x0
    h = int(np.ceil(pts[:, 1].max())) + pad + 1 - y0
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    origin = np.array([x0, y0], dtype=np.float64)
    for p, add in parts:
        draw.polygon((p - origin).ravel().tolist(), fill=255 if add else 0)
    mask = np.asarray(canvas) > 0
    if stroke > 0:
        mask = mask & ~erode(mask, stroke)
    return Raster(mask, x0, y0)


def _erode_axis(mask: np.ndarray, r: int, axis: int) -> np.ndarray:
    """1-D erosion along `axis` with a window of 2r + 1 (outside the array counts as 0)."""
    n = mask.shape[axis]
    widths = [(0, 0), (0, 0)]
    widths[axis] = (r + 1, r)
    c = np.cumsum(np.pad(mask, widths).astype(np.int32), axis=axis)
    hi = c.take(np.arange(2 * r + 1, n + 2 * r + 1), axis=axis)
    lo = c.take(np.arange(0, n), axis=axis)
    return (hi - lo) == 2 * r + 1


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """[h, w] bool: pixels whose (2r + 1)² square neighbourhood lies inside `mask`.

    Separable, with running sums: linear in the pixel count whatever `r` is.
    """
    return _erode_axis(_erode_axis(mask, r, 0), r, 1)
