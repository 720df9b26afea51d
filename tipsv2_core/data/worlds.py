"""Worlds: which classes a synthetic scene draws from, and how patch-visible they are.

A `World` fixes the label space (background + object classes), how many objects a scene
holds and how large they are, which background kinds appear, and whether each class
carries a class-typical texture. Everything else (colours, positions, rotations,
occlusion, captions) is drawn the same way in every world.

- `dense` (the default): ten classes, each drawn with its own texture at patch scale
  (stripes of one orientation, dots, checks, …; see textures.py), 1–3 large objects on
  plain, gradient or grainy backgrounds. Colour is drawn independently of the class, and
  no caption names the texture, so the only words that can explain a texture are the
  class names: a model has to tie the class word to what a 14-pixel patch shows, which
  is what zero-shot segmentation measures. No caption names a colour either: objects are
  described by class, size, count, position and relations, alt-texts by their classes
  only ("star and circle"). With colour words in the captions, the demo's encoders
  matched captions through colour alone and never learnt the class words (measured:
  zero-shot mIoU at chance, class-word embeddings at cosine 0.94 to each other). Built so
  that the alignment emerges within minutes on 2 CPU cores (README, "Learning dense
  alignment").
- `shapes26`: the harder world of earlier releases: 26 classes told apart by silhouette
  only, with fills (stripes, dots, …) drawn independently of the class, 1–5 objects of
  any size, five background kinds. At the demo's budget encoders learn colour from it
  and nothing of shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from tipsv2_core.data.classes import BACKGROUND, CLASS_NAMES


@dataclass(frozen=True)
class World:
    """One synthetic world. Label id of `classes[i]` is i + 1; 0 is the background."""

    name: str
    classes: tuple[str, ...]
    count_weights: tuple[float, ...]  # P(1 object), P(2 objects), …
    sizes: tuple[tuple[str, tuple[float, float]], ...]  # size word -> radius / S range
    backgrounds: tuple[tuple[str, float], ...]  # backgrounds.KINDS kind -> weight
    textures: tuple[tuple[str, str], ...] = ()  # class -> texture; empty: random fills
    # "classes": alt-text names every object's class and nothing else (web alt-text such
    # as "star and circle"); "partial": one or two objects, often with their colour.
    alt_text: str = "partial"
    caption_colours: bool = True  # whether captions name colours (objects', background's)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The label space: background first, then the object classes."""
        return (BACKGROUND, *self.classes)

    @property
    def class_ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}

    def texture_of(self, class_name: str) -> str | None:
        """The class-typical texture, or None in a world of random fills."""
        return dict(self.textures).get(class_name)


WORLDS: dict[str, World] = {
    "dense": World(
        name="dense",
        classes=(
            "circle",
            "square",
            "triangle",
            "star",
            "heart",
            "cross",
            "ring",
            "house",
            "tree",
            "fish",
        ),
        count_weights=(0.4, 0.35, 0.25),
        sizes=(("small", (0.16, 0.2)), ("medium", (0.2, 0.25)), ("large", (0.25, 0.3))),
        backgrounds=(("plain", 0.4), ("gradient", 0.4), ("noise", 0.2)),
        textures=(
            ("circle", "dots"),
            ("square", "hstripes"),
            ("triangle", "vstripes"),
            ("star", "plain"),
            ("heart", "checks"),
            ("cross", "dstripes"),
            ("ring", "grid"),
            ("house", "bricks"),
            ("tree", "zigzag"),
            ("fish", "rings"),
        ),
        alt_text="classes",
        caption_colours=False,
    ),
    "shapes26": World(
        name="shapes26",
        classes=CLASS_NAMES[1:],
        count_weights=(0.15, 0.25, 0.25, 0.2, 0.15),
        sizes=(("small", (0.08, 0.12)), ("medium", (0.13, 0.18)), ("large", (0.19, 0.26))),
        backgrounds=(
            ("plain", 0.2),
            ("gradient", 0.25),
            ("stripes", 0.2),
            ("noise", 0.15),
            ("checker", 0.2),
        ),
    ),
}
DEFAULT_WORLD = "dense"
# What `tipsv2 data synth` and the pipeline generate by default: the dataset `make run`
# trains on. 4,000 images give a val split of ~400, enough to measure retrieval (chance
# R@1 = 0.25 %) and zero-shot segmentation; generation takes ~15 s on 2 cores. (Here, in
# a module without numpy, so that the CLI can show them without importing the generator.)
DEFAULT_NUM_IMAGES = 4000
DEFAULT_SPLITS = (0.85, 0.1, 0.05)


def get_world(name: str) -> World:
    """The world called `name`; ValueError naming the known ones otherwise."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; choose one of: {', '.join(WORLDS)}")
    return WORLDS[name]
