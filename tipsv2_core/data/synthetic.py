"""Synthetic scenes with pixel-exact label maps and three captions of growing detail.

A scene is a few objects of its world's classes (worlds.py) on a background, with small
distractor marks ("clutter"). Each object's class, colour, size, rotation and position
are drawn independently, and so is its fill, unless the world gives each class its own
texture (textures.py); later objects occlude earlier ones. The image, the
label map and the instance map are written through the same boolean mask per object, so
they agree exactly. An object is redrawn elsewhere (or dropped) whenever it, or an object
it would cover, would keep less than `MIN_VISIBLE` of its pixels, so every object the
captions mention is visible in the label map.

Label map: class id per pixel, 0 = background, 255 (`IGNORE_INDEX`) = clutter marks.
Instance map: 0 = no object, i + 1 = `objects[i]`.

Everything is a function of `(seed, index, world)` only (`np.random.default_rng([seed, index])`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from tipsv2_core.data.backgrounds import Background, draw_background
from tipsv2_core.data.captions import make_captions
from tipsv2_core.data.classes import IGNORE_INDEX
from tipsv2_core.data.palette import (
    OBJECT_COLOURS,
    allowed_object_colours,
    jitter,
    pattern_colour,
)
from tipsv2_core.data.rand import Dice, cumulative
from tipsv2_core.data.shapes import SHAPES, Raster, place, rasterize
from tipsv2_core.data.textures import texture_colours
from tipsv2_core.data.vocabulary import position_of
from tipsv2_core.data.worlds import DEFAULT_WORLD, World, get_world

MIN_SIZE, MAX_SIZE = 112, 448
MIN_VISIBLE = 0.35  # fraction of an object's own pixels that must stay uncovered
MIN_PIXELS = 30  # and at least this many at 112 px (scaled with the area at other sizes)
FILLS = ("solid", "striped", "dotted", "checkered", "outline")
_FILL_CUM = cumulative((0.4, 0.15, 0.15, 0.15, 0.15))
_TRIES = 10
_T12 = np.linspace(0, 2 * np.pi, 12, endpoint=False)


@dataclass
class SceneObject:
    """One drawn object. Pixel coordinates: x right, y down, origin at the top-left."""

    class_name: str
    class_id: int
    colour: str  # OBJECT_COLOURS name
    rgb: tuple[int, int, int]  # the jittered colour actually drawn
    size: str  # "small" | "medium" | "large"
    fill: str  # one of FILLS ("solid" where the world gives the class a texture)
    rotation: float  # degrees, clockwise on screen
    flipped: bool  # mirrored left-right
    center: tuple[float, float]  # where the shape was placed (x, y)
    radius: float  # half-extent of the unrotated shape, pixels
    pixels: int = 0  # visible pixels in the final scene
    visible_fraction: float = 1.0  # pixels / pixels the object covered when drawn
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # visible pixels: x0, y0, x1, y1 (exclusive)
    centroid: tuple[float, float] = (0.0, 0.0)  # mean (x, y) of the visible pixels
    position: str = ""  # 3×3 grid word of the centroid, e.g. "top left", "center"
    occluded_by: dict[int, int] = field(default_factory=dict)  # later object index -> pixels
    texture: str = ""  # the class-typical texture (textures.py), "" in worlds without

    def to_json(self) -> dict:
        """JSON-ready attributes (the class as "class"; occluders keyed by object index)."""
        return {
            "class": self.class_name,
            "colour": self.colour,
            "size": self.size,
            "fill": self.fill,
            "rotation": round(self.rotation, 2),
            "flipped": self.flipped,
            "center": [round(self.center[0], 2), round(self.center[1], 2)],
            "bbox": list(self.bbox),
            "pixels": self.pixels,
            "visible_fraction": round(self.visible_fraction, 4),
            "centroid": [round(self.centroid[0], 2), round(self.centroid[1], 2)],
            "position": self.position,
            "occluded_by": {str(j): px for j, px in self.occluded_by.items()},
        } | ({"texture": self.texture} if self.texture else {})


@dataclass
class Scene:
    """A generated sample. Arrays are [S, S, 3] uint8 (image) and [S, S] uint8 (maps)."""

    seed: int
    index: int
    image: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    objects: list[SceneObject]
    background: str  # description, e.g. "a vertical gradient from pale blue to white"
    background_kind: str
    captions: dict[str, str]  # alt_text, caption_medium, caption_long
    clutter: int = 0  # number of distractor marks (labelled IGNORE_INDEX)
    world: str = DEFAULT_WORLD

    @property
    def classes(self) -> list[str]:
        """Names of the object classes visible in the label map, by class id."""
        names = get_world(self.world).class_names
        return [names[i] for i in np.unique(self.label) if 0 < i < len(names)]


def check_image_size(image_size: int) -> None:
    """Raises ValueError unless `image_size` is an integer from MIN_SIZE to MAX_SIZE."""
    if not isinstance(image_size, int | np.integer) or not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ValueError(
            f"image_size must be an integer from {MIN_SIZE} to {MAX_SIZE} pixels, "
            f"got {image_size!r}"
        )


def _clip(r: Raster, size: int) -> tuple[np.ndarray, int, int, int, int]:
    """The part of a raster inside the image: (mask, x0, y0, x1, y1)."""
    h, w = r.mask.shape
    x0, y0 = max(r.x0, 0), max(r.y0, 0)
    x1, y1 = min(r.x0 + w, size), min(r.y0 + h, size)
    return r.mask[y0 - r.y0 : y1 - r.y0, x0 - r.x0 : x1 - r.x0], x0, y0, x1, y1


def _draw_clutter(rng: Dice, image: np.ndarray, label: np.ndarray) -> int:
    """Small marks (dots, short strokes) labelled IGNORE_INDEX; returns their number.

    All marks go onto one "L" canvas (value = mark number) so PIL is called once.
    """
    size = image.shape[0]
    n = rng.integer(7)
    if n == 0:
        return 0
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    lut = np.zeros((n + 1, 3), np.uint8)
    colours = list(OBJECT_COLOURS.values())
    circle = np.stack([np.cos(_T12), np.sin(_T12)], 1)
    for m in range(1, n + 1):
        c = np.array([rng.uniform(0.05 * size, 0.95 * size) for _ in range(2)])
        length = rng.uniform(0.02, 0.05) * size
        width = max(1.0, rng.uniform(0.006, 0.014) * size)
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)])
        nrm = np.array([-d[1], d[0]]) * width / 2
        if rng.random() < 0.4:  # a dot
            pts = c + circle * width * 1.2
        else:  # a short stroke
            p0, p1 = c - d * length / 2, c + d * length / 2
            pts = np.stack([p0 + nrm, p1 + nrm, p1 - nrm, p0 - nrm])
        draw.polygon(pts.ravel().tolist(), fill=m)
        lut[m] = jitter(rng.pick(colours), rng)
    marks = np.asarray(canvas)
    on = marks > 0
    image[on] = lut[marks[on]]
    label[on] = IGNORE_INDEX
    return n


def _fill_colours(obj: SceneObject, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """[N, 3] uint8 colours of an object's pixels (ys, xs absolute) for its fill pattern."""
    main = np.asarray(obj.rgb, np.uint8)
    if obj.fill in ("solid", "outline"):
        return np.broadcast_to(main, (len(ys), 3))
    a = np.deg2rad(obj.rotation)
    dx, dy = xs - obj.center[0], ys - obj.center[1]
    u = dx * np.cos(a) + dy * np.sin(a)
    v = -dx * np.sin(a) + dy * np.cos(a)
    if obj.fill == "striped":
        p = max(4.0, obj.radius * 0.45)
        on = np.floor(u / (p / 2)) % 2 == 1
    elif obj.fill == "dotted":
        p = max(5.0, obj.radius * 0.5)
        du, dv = u % p - p / 2, v % p - p / 2
        on = du * du + dv * dv < (0.3 * p) ** 2
    else:  # checkered
        p = max(4.0, obj.radius * 0.45)
        on = (np.floor(u / p) + np.floor(v / p)) % 2 == 1
    second = np.asarray(pattern_colour(obj.rgb), np.uint8)
    return np.where(on[:, None], second, main)


def _propose(
    rng: Dice, world: World, size: int, class_name: str, fill: str, shrink: bool
) -> tuple[SceneObject, list]:
    """Random geometry (size word, rotation, flip, position) for one object."""
    spec = SHAPES[class_name]
    sizes = dict(world.sizes)
    size_word = "small" if shrink else rng.pick(tuple(sizes))
    radius = rng.uniform(*sizes[size_word]) * size
    rotation = rng.uniform(-spec.max_rotation, spec.max_rotation)
    flip = bool(spec.flippable and rng.random() < 0.5)
    cx, cy = rng.uniform(radius, size - radius), rng.uniform(radius, size - radius)
    parts = place(spec, cx, cy, radius, rotation, flip)
    pts = np.concatenate([p for p, add in parts if add])
    lo, hi = pts.min(0), pts.max(0)
    shift = np.maximum(0.0, -lo) - np.maximum(0.0, hi - (size - 1))  # keep it in frame
    parts = [(p + shift, add) for p, add in parts]
    obj = SceneObject(
        class_name,
        world.class_ids[class_name],
        "",
        (0, 0, 0),
        size_word,
        fill,
        rotation,
        flip,
        (float(cx + shift[0]), float(cy + shift[1])),
        radius,
    )
    return obj, parts


def generate_scene(
    seed: int, index: int, image_size: int, world: str | World = DEFAULT_WORLD
) -> Scene:
    """The scene number `index` of the dataset with `seed`, drawn at `image_size` pixels
    in `world` (a name from worlds.WORLDS, or a World)."""
    check_image_size(image_size)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed} index={index}")
    w = get_world(world) if isinstance(world, str) else world
    size = int(image_size)
    rng = Dice(np.random.default_rng([int(seed), int(index)]))
    kinds, weights = zip(*w.backgrounds, strict=True)
    image, bg = draw_background(rng, size, kinds, cumulative(weights))
    label = np.zeros((size, size), np.uint8)
    instance = np.zeros((size, size), np.uint8)
    clutter = _draw_clutter(rng, image, label)
    min_pixels = max(MIN_PIXELS, round(MIN_PIXELS * (size / MIN_SIZE) ** 2))
    colours = allowed_object_colours(bg.colours)

    objects: list[SceneObject] = []
    regions: list[tuple[int, int, int, int]] = []
    areas: list[int] = []
    visible: list[int] = []
    counts = tuple(range(1, len(w.count_weights) + 1))
    n_target = rng.pick_weighted(counts, cumulative(w.count_weights))
    for _ in range(n_target):
        class_name = rng.pick(w.classes)
        texture = w.texture_of(class_name)
        fill = "solid" if texture else rng.pick_weighted(FILLS, _FILL_CUM)
        colour = rng.pick(colours)
        for attempt in range(_TRIES):
            shrink = attempt >= _TRIES // 2
            obj, parts = _propose(rng, w, size, class_name, fill, shrink)
            stroke = max(2, round(obj.radius * 0.16)) if fill == "outline" else 0
            mask, x0, y0, x1, y1 = _clip(rasterize(parts, stroke), size)
            area = int(mask.sum())
            if area < min_pixels:
                continue
            under = instance[y0:y1, x0:x1][mask]
            lost = np.bincount(under, minlength=len(objects) + 1)[1:]
            if any(
                v - lo < max(MIN_VISIBLE * a, min_pixels)
                for v, lo, a in zip(visible, lost, areas, strict=True)
                if lo
            ):
                continue
            break
        else:
            continue  # no room for this object: the scene gets one fewer
        k = len(objects)
        covered = set(np.flatnonzero(lost).tolist())
        if any(objects[j].colour == colour for j in covered):
            # The same colour on both sides of an overlap would hide the boundary.
            others = [c for c in colours if c not in {objects[j].colour for j in covered}]
            colour = rng.pick(others) if others else colour
        obj.colour, obj.rgb = colour, jitter(OBJECT_COLOURS[colour], rng)
        for j in covered:
            visible[j] -= int(lost[j])
            objects[j].occluded_by[k] = int(lost[j])
        ys, xs = np.nonzero(mask)
        if texture:
            obj.texture = texture
            paint = texture_colours(texture, obj.rgb, ys + y0, xs + x0, obj.center, size)
        else:
            paint = _fill_colours(obj, ys + y0, xs + x0)
        image[y0:y1, x0:x1][mask] = paint
        label[y0:y1, x0:x1][mask] = obj.class_id
        instance[y0:y1, x0:x1][mask] = k + 1
        objects.append(obj)
        regions.append((x0, y0, x1, y1))
        areas.append(area)
        visible.append(area)

    for k, (obj, (x0, y0, x1, y1)) in enumerate(zip(objects, regions, strict=True)):
        ys, xs = np.nonzero(instance[y0:y1, x0:x1] == k + 1)
        obj.pixels = len(ys)
        obj.visible_fraction = obj.pixels / areas[k]
        obj.bbox = (
            int(xs.min()) + x0,
            int(ys.min()) + y0,
            int(xs.max()) + x0 + 1,
            int(ys.max()) + y0 + 1,
        )
        obj.centroid = (float(xs.mean()) + x0, float(ys.mean()) + y0)
        obj.position = position_of(obj.centroid, size)

    captions = make_captions(rng, objects, bg, size, alt_mode=w.alt_text, colours=w.caption_colours)
    return Scene(
        int(seed),
        int(index),
        image,
        label,
        instance,
        objects,
        bg.describe(),
        bg.kind,
        captions,
        clutter,
        w.name,
    )


__all__ = ["Background", "Scene", "SceneObject", "generate_scene"]
